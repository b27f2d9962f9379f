"""The paper's experiments as named grids of configs, and a resumable runner.

Runs live in ``OUT/runs/<name>``, where the name is built from what varies plus a hash of the whole
config, so a run shared by two experiments (fig3's ResNet-18 runs are table1's batch-64 runs) is
trained once. ``OUT/<experiment>.json`` lists the runs of each experiment for ``rbwa report``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.experiments.launch import launch_ray, launch_slurm, require, run_one, threads_for
from rbwa.io import atomic_write_json
from rbwa.training import config
from rbwa.training.config import MACHINE_KEYS, TrainConfig, identify, make_config, preset_defaults, resolve, validate
from rbwa.training.rundir import STATUSES, GridRun, run_status

# Which paper claim each experiment tests, and its grid: (setting, label, overrides) per grid point.
# The "setting" is what varies across panels or rows (model, batch size); the "label" is the method line.
METHOD_ROWS = [("sgd", {"method": "sgd"}), ("rbwa", {"method": "rbwa"})]


def _models(dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [(model, label, {"dataset": dataset, "model": model, **o})
            for model in ("resnet18", "vgg16") for label, o in METHOD_ROWS]


POSTHOC_LABELS = {"constant": "sgd (snapshots)", "cosine": "sgd (cosine LR, snapshots)",
                  "wsd": "sgd (wsd, snapshots)"}  # by LR schedule (wsd: its last 20% decayed linearly to 0)


def _snapshot_runs(dataset: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [("resnet18", label, {"dataset": dataset, "model": "resnet18", "method": "sgd", "lr_schedule": schedule,
                                 "snapshots_per_epoch": 4}) for schedule, label in POSTHOC_LABELS.items()]


LM_ROWS = [("adamw", {"method": "sgd", "snapshots_per_epoch": 4}),  # "sgd": no averaging, the base optimizer alone
           ("rbwa", {"method": "rbwa"}),
           ("adamw (harmonic LR, = rbwa)", {"method": "sgd", "lr_schedule": "harmonic"}),
           ("rbwa-e", {"method": "rbwa-e"}),
           ("adamw (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
           ("adamw (wsd)", {"method": "sgd", "lr_schedule": "wsd"}),
           ("ema", {"method": "ema"}),
           ("schedule-free adamw", {"method": "schedulefree"})]


LM_TUNED_ROWS = [("adamw (snapshots)", {"method": "sgd", "snapshots_per_epoch": 16}),
                 ("adamw (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                 ("adamw (wsd, decay 0.2)", {"method": "sgd", "lr_schedule": "wsd"})]


EXPERIMENTS: dict[str, dict[str, Any]] = {
    "fig3": {"title": "Figure 3/4: CIFAR-10, ResNet-18 and VGG-16, SGD vs RBWA", "setting": "model",
             "grid": _models("cifar10")},
    "fig5": {"title": "Figure 5/6: CIFAR-100, ResNet-18 and VGG-16, SGD vs RBWA", "setting": "model",
             "grid": _models("cifar100")},
    "table1": {"title": "Table 1: ResNet-18 on CIFAR-10, batch size study", "setting": "batch size",
               "grid": [(str(b), label, {"model": "resnet18", "batch_size": b, **o})
                        for b in (16, 32, 64, 128, 256) for label, o in METHOD_ROWS]},
    "variants": {"title": "The averaging family on ResNet-18, CIFAR-10", "setting": "model",
                 "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                     ("sgd", {"method": "sgd"}),
                     ("rbwa", {"method": "rbwa"}),
                     ("rbwa (epoch counter)", {"method": "rbwa", "counter": "epochs"}),
                     ("rbwa-e", {"method": "rbwa-e"}),
                     ("rswa", {"method": "rswa"}),
                     ("swa", {"method": "swa"}),
                     ("ema", {"method": "ema"}),
                     ("lookahead", {"method": "lookahead"}),
                 ]]},
    "alternatives": {"title": "RBWA against its alternatives on ResNet-18, CIFAR-10", "setting": "model",
                     "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                         ("sgd", {"method": "sgd"}),
                         ("rbwa", {"method": "rbwa"}),
                         ("rbwa (epoch counter)", {"method": "rbwa", "counter": "epochs"}),
                         ("sgd (step x0.1 at start)", {"method": "sgd", "lr_schedule": "step"}),
                         ("sgd (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                         ("swa", {"method": "swa"}),
                     ]]},
    # The write-back period is the only thing that varies: one EMA coefficient (0.999, the ema method's and Switch
    # EMA's) for every line; "every step" is RBWA-E's mechanism at that coefficient, not the paper's beta 0.9.
    "writeback": {"title": "Write-back period of an EMA of the weights, ResNet-18, CIFAR-10", "setting": "model",
                  "grid": [("resnet18", label, {"model": "resnet18", "beta": 0.999, "ema_decay": 0.999, **o})
                           for label, o in [
                               ("sgd", {"method": "sgd"}),
                               ("ema (never written back)", {"method": "rbwa-e", "write_back": 0}),
                               ("sema (every epoch)", {"method": "sema"}),
                               ("ema, every 100 steps", {"method": "rbwa-e", "write_back": 100}),
                               ("ema, every step (rbwa-e)", {"method": "rbwa-e"}),
                           ]]},
    # SGD storing its weights 4 times an epoch, at a constant LR and on a cosine schedule: every side average of each
    # trajectory, chosen after training (`rbwa posthoc` on each run, then `rbwa report`); the cosine runs are also
    # the decay an average may replace, and the series for averaging on top of it
    "posthoc": {"title": "Side averages chosen after training, from the snapshots of constant-LR and cosine-LR SGD, "
                         "ResNet-18, CIFAR-10", "setting": "model", "grid": _snapshot_runs("cifar10")},
    "posthoc-cifar100": {"title": "Side averages chosen after training, from the snapshots of constant-LR and "
                                  "cosine-LR SGD, ResNet-18, CIFAR-100", "setting": "model",
                         "grid": _snapshot_runs("cifar100")},
    # a character GPT on Tiny Shakespeare with AdamW: the paper's claims and the post-hoc answer beyond CNNs (the
    # constant-LR runs store their weights 4 times an epoch for `rbwa posthoc`); text has no subsets
    "lm": {"title": "A GPT on Tiny Shakespeare with AdamW: RBWA, its twin, schedules and averages", "setting": "model",
           "grid": [("gpt", label, {"dataset": "shakespeare", "model": "gpt", "optimizer": "adamw", **o})
                    for label, o in LM_ROWS]},
    # the fair comparison (issue 40): every schedule at three peak learning rates, WSD's decay fraction at three, the
    # constant-LR runs storing their weights 16 times an epoch (a window of 10% of training holds 8 snapshots) for
    # `rbwa posthoc --families swa lawa ema wsm power`; each method's learning rate is chosen on the other seeds
    "lm-tuned": {"title": "A GPT on Tiny Shakespeare with AdamW: averages against decays, each tuned on the other "
                          "seeds", "setting": "model",
                 "grid": [("gpt", f"{label}, lr {lr:g}", {"dataset": "shakespeare", "model": "gpt",
                                                          "optimizer": "adamw", "lr": lr, **o})
                          for lr in (5e-4, 1e-3, 2e-3) for label, o in LM_TUNED_ROWS]
                         + [("gpt", f"adamw (wsd, decay {f:g}), lr 0.001",
                             {"dataset": "shakespeare", "model": "gpt", "optimizer": "adamw", "lr": 1e-3,
                              "method": "sgd", "lr_schedule": "wsd",
                              "decay_fraction": f}) for f in (0.1, 0.4)]},
    "controls": {"title": "RBWA against learning-rate annealing controls, ResNet-18, CIFAR-10", "setting": "model",
                 "grid": [("resnet18", label, {"model": "resnet18", **o}) for label, o in [
                     ("sgd", {"method": "sgd"}),
                     ("rbwa", {"method": "rbwa"}),
                     ("sgd (harmonic LR, = rbwa)", {"method": "sgd", "lr_schedule": "harmonic"}),
                     ("rbwa-e", {"method": "rbwa-e"}),
                     ("sgd (rbwa-e's LR, = rbwa-e)", {"method": "sgd", "lr_schedule": "rbwa-e"}),
                     ("sgd (step x0.1 at start)", {"method": "sgd", "lr_schedule": "step"}),
                     ("sgd (cosine LR)", {"method": "sgd", "lr_schedule": "cosine"}),
                 ]]},
}


def run_name(cfg: TrainConfig) -> str:
    """A readable, unique directory name: the usual varying keys and a hash of everything else.

    The hash sees the dataset as what it is (``identify``), never where it lies, so any copy of the data,
    given by any path, finds the same runs.
    """
    # only keys that differ from the defaults enter the hash, so adding a config key keeps every name; the start
    # epoch's default was 10 when runs were first named (now a fifth of the epochs, resolved): 10 stays out
    defaults = {**TrainConfig().to_dict(), "start_epoch": 10}
    keys = {k: v for k, v in identify(cfg).items() if v != defaults[k]}
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:8]
    extra = "" if cfg.optimizer == "sgd" else f"-{cfg.optimizer}"
    extra += "" if cfg.lr_schedule == "constant" else f"-{cfg.lr_schedule}"
    extra += "" if cfg.counter == "folds" or cfg.method != "rbwa" else f"-{cfg.counter}"
    extra += "" if cfg.write_back == 1 else f"-wb{cfg.write_back}"
    extra += "" if cfg.snapshots_per_epoch is None else f"-snap{cfg.snapshots_per_epoch}"
    extra += "" if cfg.snapshot_every is None else f"-snapevery{cfg.snapshot_every}"
    return f"{cfg.model}-bs{cfg.batch_size}-{cfg.method}{extra}-s{cfg.seed}-{digest}"


def expand(experiment: str, preset: str, seeds: int, out: str | Path,
           overrides: dict[str, Any] | None = None) -> list[GridRun]:
    """Every run of ``experiment`` under ``preset``: grid points x seeds 0..seeds-1. Validated, nothing written.

    Within a setting the runs go seed by seed (every method's seed 0, then seed 1, ...), so a sweep stopped
    part way leaves paired seeds that the report can compare.
    """
    if experiment not in EXPERIMENTS:
        raise UserError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    overrides = dict(overrides or {})
    grid = EXPERIMENTS[experiment]["grid"]
    varied = sorted({k for _, _, point in grid for k in point if k != "dataset"} & set(overrides))
    if varied:
        raise UserError(f"{experiment} sets {', '.join(varied)} itself; drop those flags")
    base = preset_defaults(preset)
    runs = []
    for setting in dict.fromkeys(s for s, _, _ in grid):
        for seed in range(seeds):
            for label, point in ((label, point) for s, label, point in grid if s == setting):
                # the grid names the dataset; a user's --dataset (their copy of it) wins
                cfg = make_config(**{**base, **point, **overrides, "seed": seed})
                validate(resolve(cfg))
                cfg.out = str(Path(out) / "runs" / run_name(cfg))
                runs.append(GridRun(experiment, setting, label, seed, cfg))
    return runs


def manifest(experiment: str, preset: str, runs: list[GridRun], out: Path,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``OUT/<experiment>.json``: the runs and the flags given, with no path of this machine in it."""
    spec = EXPERIMENTS[experiment]
    recorded = {k: v for k, v in (overrides or {}).items() if k not in MACHINE_KEYS}
    if "dataset" in recorded and runs:
        recorded["dataset"] = identify(runs[0].config)["dataset"]
    return {"experiment": experiment, "title": spec["title"], "setting": spec["setting"], "preset": preset,
            "overrides": recorded,
            "runs": [{"run": str(Path(r.config.out).relative_to(out)), "setting": r.setting, "label": r.label,
                      "seed": r.seed} for r in runs]}


def merge_manifest(old: dict[str, Any] | None, new: dict[str, Any], path: Path) -> dict[str, Any]:
    """The manifest a sweep leaves in ``path``: runs only ever join it, so a second sweep with fewer seeds keeps
    the first one's runs. A sweep of another preset or other flags in the same directory is refused."""
    if old is None:
        return new
    if (old.get("preset"), old.get("overrides")) != (new["preset"], new["overrides"]):
        flags = lambda m: ", ".join(f"{k}={v}" for k, v in sorted(m["overrides"].items())) or "none"  # noqa: E731
        raise UserError(f"{path} lists a {new['experiment']} sweep with preset {old.get('preset')} and flags "
                        f"{flags(old)}; this one has preset {new['preset']} and flags {flags(new)}: give it another "
                        "--out (a directory holds one sweep of each experiment)")
    known = {entry["run"] for entry in old["runs"]}
    return {**new, "runs": old["runs"] + [entry for entry in new["runs"] if entry["run"] not in known]}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest in ``path``, None where there is none; an unreadable one is refused (never overwritten)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); move it away, then rerun to list this sweep's runs anew") from e


def plan(experiment: str, preset: str, seeds: int, out: str | Path, overrides: dict[str, Any] | None = None,
         write: bool = True, only: list[str] | None = None) -> list[GridRun]:
    """The runs of a sweep, listed in ``OUT/<experiment>.json`` (merged with what it lists already) when ``write``.

    Every path is made absolute as this process sees it: a launcher's workers may start elsewhere (a Ray
    cluster's head directory). ``only`` (settings to train) is checked against the grid before anything is written.
    """
    out, overrides = Path(out).absolute(), config.absolute_paths(overrides or {})
    runs = expand(experiment, preset, seeds, out, overrides)
    settings = list(dict.fromkeys(str(r.setting) for r in runs))
    unknown = [s for s in only or [] if s not in settings]
    if unknown:
        raise UserError(f"--only {' '.join(unknown)}: {experiment} has the settings {', '.join(settings)}")
    path = out / f"{experiment}.json"
    new = manifest(experiment, preset, runs, out, overrides)
    if not write:
        merge_manifest(read_manifest(path), new, path)  # refuses a sweep of other flags, writes nothing
        return runs
    try:
        out.mkdir(parents=True, exist_ok=True)
        # two sweeps started together each read, merge and rewrite the manifest: one at a time, or one's runs are
        # lost. The lock is an flock on the directory itself, so it leaves no file behind and dies with its process
        lock = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            atomic_write_json(path, merge_manifest(read_manifest(path), new, path))
        finally:
            os.close(lock)
    except OSError as e:
        raise UserError(f"cannot write to --out {out} ({e.strerror}); choose a writable directory") from e
    return runs


def reproduce(experiment: str, preset: str = "cpu", seeds: int = 3, out: str | Path = "runs",
              overrides: dict[str, Any] | None = None, dry_run: bool = False, launcher: str = "local",
              cpus_per_run: float | None = None, gpus_per_run: float = 0.0, ray_address: str | None = None,
              slurm: dict[str, Any] | None = None, only: list[str] | None = None) -> list[GridRun]:
    """Train every run of the grid that is not finished yet; finished runs are skipped, interrupted ones resumed.

    ``only`` keeps the runs of these settings (a grid point's first column: a model, a batch size); the manifest
    still lists the whole grid, so a report says what is missing.

    ``launcher`` says where runs train (launch.py): ``local`` here, one after another; ``ray`` as Ray tasks of
    ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; ``slurm`` as a submitit job array (``slurm``: its
    parameters, see ``launch.slurm_parameters``), returning once submitted.
    """
    require(launcher)
    out = Path(out).absolute()
    runs = plan(experiment, preset, seeds, out, overrides, write=not dry_run, only=only)
    runs = [r for r in runs if only is None or str(r.setting) in only]
    if dry_run:
        for r in runs:
            print(f"{r.setting:>10}  {r.label:<36} seed {r.seed}  {run_status(Path(r.config.out)):<11}  {r.config.out}")
        return runs
    todo = []
    for i, r in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {experiment} {r.setting} {r.label} seed {r.seed}:"
        status = run_status(Path(r.config.out))
        if status in ("finished", "diverged"):
            print(f"{head} {status}, skipped", flush=True)
        elif status == "running":
            print(f"{head} training in another process, skipped", flush=True)
        elif launcher != "local":
            todo.append(r)
        else:
            print(f"{head} training", flush=True)
            result = run_one(r.config.to_dict(), threads_for(cpus_per_run), verbose=True)
            if result != "finished":  # diverged (recorded in its summary.json), or taken by another process
                print(f"  {result}", flush=True)
    if launcher == "ray" and todo:
        print(f"{len(todo)} run(s) to train on Ray, {cpus_per_run or 1} CPU(s) and {gpus_per_run} GPU(s) each",
              flush=True)
        launch_ray(todo, out, cpus_per_run or 1.0, gpus_per_run, ray_address)
    if launcher == "slurm" and todo:
        launch_slurm(todo, out / "slurm", **(slurm or {}))
    diverged = [r.name for r in runs if run_status(Path(r.config.out)) == "diverged"]
    if diverged:
        print(f"{len(diverged)} run(s) diverged and are marked so in their summary.json: {', '.join(diverged)}")
    return runs


def status(out: str | Path) -> dict[str, dict[str, int]]:
    """Per experiment manifest in ``out``: how many of its runs are in each of STATUSES."""
    out = Path(out)
    found = {}
    for path in sorted(out.glob("*.json")):
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(spec, dict) and "experiment" in spec:
            counts = dict.fromkeys(STATUSES, 0)
            for entry in spec["runs"]:
                counts[run_status(out / entry["run"])] += 1
            found[spec["experiment"]] = counts
    if not found:
        raise UserError(f"{out} holds no experiment manifests (*.json written by `rbwa reproduce`)")
    return found
