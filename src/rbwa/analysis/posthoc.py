"""Side averages chosen after training, from one run's snapshots (``rbwa posthoc RUN``).

A side average never feeds back into training, so one run that stored its live weights holds every side average
of its trajectory. Each candidate is a weighted mean of the snapshots (weights summing to 1):

* SWA from snapshot s: the uniform mean of every snapshot from s to the last (``swa`` and SWA's paper);
* LAWA of window k (Kaddour 2022): the uniform mean of the last k snapshots taken at an epoch's end (with one
  snapshot an epoch, the same set as SWA from the k-th last);
* EMA of half-life h steps: ``avg <- d^g avg + (1 - d^g) snapshot`` over the series from a start snapshot, with
  d = 0.5^(1/h) and g the steps since the previous snapshot. With a snapshot after every step (g = 1) it is the
  online EMA ``avg <- d avg + (1 - d) w`` exactly; with one every m steps each snapshot stands for the m steps
  that end at it, which is exact where the weights stay constant within those m steps and otherwise off by at
  most how far they move within them (tests check both).

Each candidate is evaluated like the trainer evaluates a side average: its BatchNorm statistics re-estimated on
the training split (``swa_utils.update_bn``), then the test split. Members that write their average back
(rbwa, rbwa-e, rswa, lookahead, sema) change the trajectory itself: no snapshot series rebuilds them, and such
runs are refused.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rbwa.averaging.weights import (
    DECAY_SHAPES,
    combine,
    ema_weights,
    lawa_weights,
    power_weights,
    sigma_rel,
    swa_weights,
    wsm_weights,
)
from rbwa.checkpoints import snapshots
from rbwa.errors import UserError
from rbwa.io import atomic_write_bytes
from rbwa.training.config import CHOICES, DEFAULT_POSTHOC_FAMILIES, POSTHOC_FAMILIES, TrainConfig, make_config
from rbwa.training.progress import Progress
from rbwa.training.rundir import CONFIG, SUMMARY

WRITE_BACK_METHODS = ("rbwa", "rbwa-e", "rswa", "lookahead", "sema")
FAMILIES, DEFAULT_FAMILIES = POSTHOC_FAMILIES, DEFAULT_POSTHOC_FAMILIES
HALF_LIVES_IN_EPOCHS = (0.125, 0.25, 0.5, 1, 2, 4, 8)  # the default EMA grid, in epochs of the run
POWER_GAMMAS = (1.0, 3.0, 7.0, 15.0, 31.0, 63.0)  # the default power-EMA grid: sigma_rel 0.24 down to 0.015


@dataclass
class Candidate:
    family: str  # swa, lawa, ema, wsm, power
    # SWA: the start, in epochs; LAWA: the window, in epoch ends; EMA: the half-life, in steps; WSM: the window, in
    # snapshot intervals (its decay shape in the label); power: the exponent gamma
    value: float
    label: str
    weights: np.ndarray


def distinct_texts(values: list[float], digits: int = 3) -> list[str]:
    """Each value in the fewest significant digits, at least ``digits``, that tell the distinct values apart (a
    label is a candidate's name: two must not share one, as "10.1" for epochs 10.0625 and 10.125). Pure."""
    for d in range(digits, 18):
        texts = [f"{v:.{d}g}" for v in values]
        if len(set(texts)) == len(set(values)):
            return texts
    return [repr(v) for v in values]


def candidates(steps: list[int], steps_per_epoch: int, start_step: int, lawa_windows: list[int] | None = None,
               half_lives: list[float] | None = None, families: tuple[str, ...] = DEFAULT_FAMILIES,
               wsm_windows: list[int] | None = None, gammas: list[float] | None = None) -> list[Candidate]:
    """The grid over a series of snapshots taken after ``steps`` steps, of each of ``families``: SWA from every
    snapshot after ``start_step``, LAWA of every window of epoch ends (or ``lawa_windows``), EMA from the first
    snapshot after ``start_step`` at each half-life in steps (default: 1/8 to 8 epochs), WSM of each decay shape over
    the last k snapshot intervals after the start (k = 2, 4, 8, ..., or ``wsm_windows``), and the power EMA of the
    whole series at each gamma (default :data:`POWER_GAMMAS`). The final weights alone (LAWA over the last epoch
    end) are always evaluated: every candidate is compared with them. Pure."""
    n = len(steps)
    first = next((i for i, s in enumerate(steps) if s > start_step), None)
    if first is None:
        raise UserError(f"no snapshot after the start step {start_step}; nothing to average")
    epoch_ends = [i for i, s in enumerate(steps) if s % steps_per_epoch == 0 and i >= first]
    # a window of 1 is the final weights alone: always evaluated, the baseline every candidate is compared with
    windows = sorted({1, *lawa_windows}) if lawa_windows else list(range(1, len(epoch_ends) + 1))
    if "lawa" not in families:
        windows = [1]
    lives = half_lives or [h * steps_per_epoch for h in HALF_LIVES_IN_EPOCHS]
    intervals = n - 1 - first  # snapshot intervals after the first snapshot past the start
    spans = wsm_windows or [2 ** j for j in range(1, 64) if 2 ** j <= intervals]
    for name, asked, most in (("--lawa", lawa_windows if "lawa" in families else None, len(epoch_ends)),
                              ("--wsm-windows", wsm_windows if "wsm" in families else None, intervals)):
        beyond = sorted(k for k in asked or [] if k > most)
        if beyond:
            raise UserError(f"{name} {' '.join(map(str, beyond))}: the run has {most} "
                            f"{'epoch ends' if name == '--lawa' else 'snapshot intervals'} after its start epoch")
    starts = [steps[i] / steps_per_epoch for i in range(first, n)]
    found = [Candidate("swa", e, f"SWA from epoch {text}", swa_weights(n, i))
             for i, e, text in zip(range(first, n), starts, distinct_texts(starts)) if "swa" in families]
    found += [Candidate("lawa", k, f"LAWA, last {k} epoch ends", lawa_weights(epoch_ends, n, k))
              for k in windows if k <= len(epoch_ends)]
    found += [Candidate("ema", h, f"EMA, half-life {h:g} steps", ema_weights(steps, 0.5 ** (1 / h), first))
              for h in lives if "ema" in families]
    found += [Candidate("wsm", k, f"WSM {shape}, last {k} snapshot intervals", wsm_weights(n, k, shape))
              for shape in DECAY_SHAPES for k in spans if "wsm" in families and 1 <= k <= intervals]
    found += [Candidate("power", g, f"power EMA, gamma {g:g} (sigma_rel {sigma_rel(g):.3f})", power_weights(steps, g))
              for g in (gammas or POWER_GAMMAS) if "power" in families]
    return found


def refuse(run_dir: Path, config: dict[str, Any]) -> None:
    """One line for a run this cannot serve: not a run, no snapshots, or a member that writes its average back."""
    method = config.get("method")
    if method in WRITE_BACK_METHODS and not (method in ("rbwa", "rbwa-e") and config.get("write_back") == 0):
        raise UserError(f"{run_dir} trained {method}, which writes its average back into the weights it trains: "
                        "its trajectory depends on the average, so no snapshot series rebuilds it; post-hoc "
                        "averaging needs a run whose averages stay on the side (sgd, swa, ema, schedulefree, or "
                        "--write-back 0)")
    if not snapshots.taken(run_dir):
        if config.get("snapshots_per_epoch") or config.get("snapshot_every"):
            raise UserError(f"{run_dir} was trained with snapshots, but they are not here (results/ commits no "
                            f"snapshots: they cost their weights' bytes each); train the run again to have them")
        raise UserError(f"{run_dir} has no snapshots; train it with --snapshot-every N or --snapshots-per-epoch K")


def load_run(run_dir: Path, dataset: str | None = None, data_dir: str | None = None,
             cache_dir: str | None = None) -> TrainConfig:
    """The config a finished run trained with, its data found on this machine: an image folder's path is not
    recorded (only what the folder is), so it comes from ``dataset`` and must be the same data."""
    from rbwa.training.config import identify, resolve

    try:
        saved = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir} holds no readable {CONFIG}: not a run directory") from e
    refuse(run_dir, saved)
    if not (run_dir / SUMMARY).exists():
        raise UserError(f"{run_dir} has not finished (no {SUMMARY}); post-hoc averaging reads a finished run")
    recorded = str(saved["dataset"])
    for kind, what in (("folder", "folder"), ("text", "file")):
        if recorded.startswith(f"{kind}:") and not dataset:
            raise UserError(f"{run_dir} trained on {recorded}; give its {what} with --dataset {kind}:PATH")
    cfg = resolve(make_config(**{**saved, "dataset": dataset or recorded, "data_dir": data_dir,
                                 "cache_dir": cache_dir, "out": str(run_dir)}))
    if identify(cfg)["dataset"] != recorded:
        raise UserError(f"--dataset {dataset} is {identify(cfg)['dataset']}, but {run_dir} trained on {recorded}")
    return cfg


def evaluate_run(run_dir: str | Path, dataset: str | None = None, data_dir: str | None = None,
                 cache_dir: str | None = None, grid: dict[str, Any] | None = None, bn_images: int | None = None,
                 device: str = "cpu", progress: bool | None = None) -> list[dict[str, Any]]:
    """Every candidate of ``grid`` (``candidates``' keyword arguments) evaluated on the run's test split; rows."""
    from torch.optim.swa_utils import update_bn

    from rbwa.data import is_text, stratified_indices
    from rbwa.data.loader import BatchLoader, channel_stats
    from rbwa.models import build_model
    from rbwa.training.tasks import evaluate, prepare_data, prepare_task

    run_dir = Path(run_dir)
    cfg = load_run(run_dir, dataset, data_dir, cache_dir)
    steps = snapshots.taken(run_dir)
    per_epoch = json.loads((run_dir / SUMMARY).read_text())["steps_per_epoch"]
    grid = candidates(steps, per_epoch, cfg.start_epoch * per_epoch, **(grid or {}))
    series = [snapshots.read(run_dir, s)["params"] for s in steps]
    if is_text(cfg.dataset):  # a language model has no BatchNorm: nothing to re-estimate
        task = prepare_task(cfg, torch.device(device))
        model, test_loader, bn_loader, bn_count = task.model.to(device), task.test, None, 0
    else:
        train, test = prepare_data(cfg)
        mean, std = channel_stats(train.images)
        bn_split = train if bn_images is None else train.subset(stratified_indices(train.labels, bn_images, 0,
                                                                                   "bn images"))
        bn_loader = BatchLoader(bn_split.images, bn_split.labels, cfg.eval_batch_size, mean, std, device)
        test_loader = BatchLoader(test.images, test.labels, cfg.eval_batch_size, mean, std, device)
        model, bn_count = build_model(cfg.model, len(train.classes), cfg.width).to(device), len(bn_split.labels)
    rows = []
    shown = Progress(len(grid), f"posthoc {run_dir.name}", progress, unit="candidates")
    for c in grid:
        # the buffers are re-estimated below; a tied output layer is its embedding, stored once
        model.load_state_dict(combine(series.__getitem__, c.weights, torch.float32), strict=False)
        if bn_loader is not None:
            update_bn(bn_loader, model)
        loss, acc = evaluate(model, test_loader)
        used = np.nonzero(c.weights)[0]
        rows.append({"family": c.family, "value": c.value, "label": c.label, "test_acc": acc, "test_loss": loss,
                     "snapshots": len(used), "first_step": steps[used[0]], "last_step": steps[used[-1]],
                     "bn_images": bn_count})
        shown.step()
    shown.close()
    return rows


FIELDS = ("family", "value", "label", "test_acc", "test_loss", "snapshots", "first_step", "last_step", "bn_images")


def write_results(run_dir: Path, rows: list[dict[str, Any]], out: Path | None = None) -> Path:
    """``posthoc.csv``, ``posthoc.md`` and ``posthoc.png`` in ``out`` (default RUN/posthoc); returns the folder."""
    import io

    from rbwa.analysis.plots import plot_posthoc

    out = Path(out or Path(run_dir) / "posthoc")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(out / "posthoc.csv", text.getvalue().encode())
    summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    config = json.loads((Path(run_dir) / CONFIG).read_text())
    last = final_reestimated(rows)
    own = float(last["test_acc"]) if last else summary["final_test_acc"]
    own_loss = float(last["test_loss"]) if last else summary["final_test_loss"]
    baseline = ("the final weights (the last snapshot alone, evaluated like every candidate)" if last
                else f"{recorded_as(config)} as the run recorded it")
    text = config.get("model") == "gpt"  # a language model: its validation loss is the measure, shown first
    if text:
        measured = (f"validation loss {own_loss:.4f} nats, {own:.2f}% next-character accuracy. The run itself "
                    f"recorded {summary['final_test_loss']:.4f} nats")
        columns = "validation loss (nats) | vs the final weights | next-character acc (%) | vs the final weights"
    else:
        measured = (f"{own:.2f}% test accuracy, test loss {own_loss:.4f}. The run itself recorded "
                    f"{summary['final_test_acc']:.2f}%")
        columns = "test acc (%) | vs the final weights | test loss | vs the final weights"
    lines = [f"# Post-hoc side averages of {Path(run_dir).name}", "",
             f"Every candidate is a weighted mean of the run's snapshots, {bn_phrase(rows)}, and is compared with "
             f"{baseline}: {measured} for {recorded_as(config)}.", "",
             f"| family | candidate | snapshots | {columns} |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        acc = f"{row['test_acc']:.2f} | {row['test_acc'] - own:+.2f}"
        loss = f"{row['test_loss']:.4f} | {row['test_loss'] - own_loss:+.4f}"
        lines.append(f"| {row['family']} | {row['label']} | {row['snapshots']} | "
                     f"{f'{loss} | {acc}' if text else f'{acc} | {loss}'} |")
    lines += ["", "Best of each family (a maximum over this grid on this seed: choose on other seeds before "
              "trusting it):", ""]
    for family in FAMILIES:
        best = max((r for r in rows if r["family"] == family), key=lambda r: r["test_acc"], default=None)
        lowest = min((r for r in rows if r["family"] == family), key=lambda r: r["test_loss"], default=None)
        if best and text:
            lines.append(f"- {family}: lowest validation loss: {lowest['label']}, {lowest['test_loss']:.4f} nats; "
                         f"best next-character accuracy: {best['label']}, {best['test_acc']:.2f}%")
        elif best:
            lines.append(f"- {family}: {best['label']}, {best['test_acc']:.2f}%; lowest test loss: "
                         f"{lowest['label']}, {lowest['test_loss']:.4f}")
    atomic_write_bytes(out / "posthoc.md", ("\n".join(lines) + "\n").encode())
    schedule = config.get("lr_schedule", "constant")
    plot_posthoc(rows, own_loss if text else own, out / "posthoc.png", f"Post-hoc side averages, {Path(run_dir).name}",
                 own_label=("the final weights" + ("" if text else ", BatchNorm re-estimated") if last
                            else recorded_as(config))
                 + (f" ({schedule}-LR {config.get('method')})" if config.get("method") == "sgd" else ""),
                 metric="test_loss" if text else "test_acc")
    return out


def recorded_as(config: dict[str, Any]) -> str:
    """What a run's recorded final test accuracy is the accuracy of: its live weights, or its online average."""
    method = config.get("method")
    if method in ("swa", "ema") or (method in ("rbwa", "rbwa-e") and config.get("write_back") == 0):
        return f"its online side average ({method}{', never written back' if method.startswith('rbwa') else ''})"
    if method == "schedulefree":
        return "schedule-free's evaluation weights (its averaged sequence)"
    return "its final live weights" + ("" if config.get("model") == "gpt" else " (BatchNorm statistics as trained)")


def final_reestimated(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row of the run's final weights alone, BatchNorm re-estimated like every candidate: LAWA over the last
    epoch end, whose one snapshot is the last (None where the grid did not evaluate it)."""
    last = max((int(r["last_step"]) for r in rows), default=None)
    return next((r for r in rows if r["family"] == "lawa" and int(r["snapshots"]) == 1
                 and int(r["last_step"]) == last), None)


def bn_text(rows: list[dict[str, Any]]) -> str:
    """What the candidates' BatchNorm statistics were re-estimated on, in words."""
    counts = sorted({int(r["bn_images"]) for r in rows})
    return f"{' or '.join(map(str, counts))} training images"


def bn_phrase(rows: list[dict[str, Any]]) -> str:
    """How the candidates were evaluated, in words: BatchNorm re-estimated on so many images, or no BatchNorm."""
    if all(int(r["bn_images"]) == 0 for r in rows):
        return "nothing re-estimated (the model has no BatchNorm)"
    return f"BatchNorm re-estimated on {bn_text(rows)}"


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``posthoc/posthoc.csv`` ([] where there is none)."""
    path = Path(run_dir) / "posthoc" / "posthoc.csv"
    if not path.exists():
        return []
    with open(path) as f:
        return [{**r, "value": float(r["value"]), "test_acc": float(r["test_acc"]),
                 "test_loss": float(r["test_loss"])} for r in csv.DictReader(f)]


def posthoc_command(run_dir: str | Path, dataset: str | None = None, data_dir: str | None = None,
                    cache_dir: str | None = None, lawa: list[int] | None = None, half_lives: list[float] | None = None,
                    families: tuple[str, ...] = DEFAULT_FAMILIES, wsm_windows: list[int] | None = None,
                    gammas: list[float] | None = None, bn_images: int | None = None, device: str = "cpu",
                    out: Path | None = None, quiet: bool = False) -> Path:
    """``rbwa posthoc``: the grid's numbers and the device checked, every candidate evaluated, the results written;
    returns their folder."""
    for name, values in (("lawa", lawa), ("half_lives", half_lives), ("wsm_windows", wsm_windows), ("gammas", gammas)):
        if any(not (math.isfinite(v) and v > 0) for v in values or []):
            raise UserError(f"--{name.replace('_', '-')} takes numbers > 0, got {values}")
    if device not in CHOICES["device"]:
        raise UserError(f"--device must be one of {', '.join(CHOICES['device'])}, got {device!r}")
    if bn_images is not None and bn_images < 1:
        raise UserError(f"--bn-images must be >= 1, got {bn_images}")
    grid = {"lawa_windows": lawa, "half_lives": half_lives, "families": tuple(families), "wsm_windows": wsm_windows,
            "gammas": gammas}
    rows = evaluate_run(run_dir, dataset, data_dir, cache_dir, grid, bn_images, device,
                        progress=False if quiet else None)
    return write_results(run_dir, rows, out)
