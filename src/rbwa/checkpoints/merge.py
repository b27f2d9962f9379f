"""Post-hoc averages of any trainer's checkpoints (``rbwa merge``): SWA, LAWA or an EMA of a series of checkpoints
as users have them, written back in the format they came in, loadable without rbwa.

One small reader/writer per format, each found by what a checkpoint holds (not by its file name):

* ``hf``: a Hugging Face checkpoint folder (``model.safetensors``, sharded safetensors or ``pytorch_model.bin`` with
  their index), stepped by its ``trainer_state.json``; an ``output_dir`` stands for its ``checkpoint-N/`` folders.
  Written as a folder with ``model.safetensors`` and the last checkpoint's config, tokenizer and generation files
  (no trainer or callback state), for ``from_pretrained``;
* ``lightning``: Lightning checkpoints (``state_dict`` and ``global_step``); written as a ``.ckpt`` of the last one with
  the merged ``state_dict`` and no optimizer, scheduler, loop or callback state, for ``load_from_checkpoint``;
* ``rbwa``: rbwa's snapshots (``rbwa train``'s ``RUN/snapshots/``, the Lightning and Hugging Face
  ``SnapshotCallback``'s), stepped by their ``step``; written as the module's whole state dict (tied names included);
* ``torch``: plain ``torch.save`` state dicts; written as one;
* ``dcp``: ``torch.distributed.checkpoint`` folders (a ``.metadata`` file beside the shards), saved sharded by any
  number of processes, read whole in one process: the weights are the dict under ``model`` (``get_state_dict``) or
  ``state_dict`` (Lightning's ``ModelParallelStrategy``, whose ``meta.pt`` gives the step), else the top-level tensors
  (``dcp.save(model.state_dict())``); written as such a folder, the weights in the same place, no optimizer state.

A series is ordered by the step each checkpoint records, else by a step its name states unambiguously
(:func:`name_step`); a checkpoint with neither is refused, unless ``in_order`` takes the order given (then only LAWA,
which needs no steps). The weights of each average come from :mod:`rbwa.averaging.weights`, whose streaming
``combine`` reads one checkpoint at a time (and none of weight 0): memory holds one checkpoint and a float64
accumulator whatever the series' length. Floating-point tensors are averaged in float64 and written in their own
dtype; others (step counters, ``num_batches_tracked``) are the last checkpoint's. The result is written to a temporary
beside ``out`` and renamed when complete. BatchNorm running statistics are averaged like any float tensor, which is
not what the averaged weights would gather: :func:`reestimate_bn` re-estimates them on data you give.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import textwrap
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
from rbwa.io import atomic_folder, atomic_torch_save

FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # the files a folder of checkpoints is searched for
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
STATE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npy", ".npz")  # tensors or trainer state
TRAINER_FILES = ("trainer_state.json", "latest", "zero_to_fp32.py")  # the Trainer's and DeepSpeed's, not the model's
DCP_WEIGHTS = ("model", "state_dict")  # the keys under which a distributed checkpoint may nest the model's weights
LIGHTNING_META = "meta.pt"  # beside a Lightning distributed checkpoint's shards: everything but the tensors
LIGHTNING_DROP = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # trainer state a merge does not keep
_STEP_WORD = re.compile(r"(?<![a-z])(?:step|checkpoint)[-_=]?(\d+)", re.IGNORECASE)


@dataclass
class Checkpoint:
    path: Path
    step: int | None  # the optimizer step it was saved at (None: unknown: neither recorded nor named, or in_order)
    marked: bool = True  # the step is recorded in it or marked in its name (step-N), not a name's bare number


# ---- formats: one reader and one writer each ----

class Format:
    """A checkpoint format: ``read`` gives a checkpoint's tensors by name, ``write`` a merged result at ``out`` (which
    does not exist) from the series' last checkpoint ``last``, atomically; a failed write raises OSError."""

    name = ""

    def read(self, path: Path) -> dict[str, Tensor]:
        raise NotImplementedError

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        atomic_torch_save(merged, out)


class TorchFile(Format):
    name = "torch"

    def read(self, path: Path) -> dict[str, Tensor]:
        return _tensors(_load(path), path)


class Snapshot(Format):
    name = "rbwa"

    def read(self, path: Path) -> dict[str, Tensor]:
        return snapshots.state_dict(_load(path))


class LightningFile(Format):
    name = "lightning"

    def read(self, path: Path) -> dict[str, Tensor]:
        return _load(path, mmap=True)["state_dict"]  # mapped: the optimizer state beside it is never read

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        keep = {k: v for k, v in _load(last, mmap=True).items() if k not in LIGHTNING_DROP}
        atomic_torch_save({**keep, "state_dict": merged}, out)


class HfFolder(Format):
    name = "hf"

    def read(self, path: Path) -> dict[str, Tensor]:
        index = next((path / n for n in HF_INDEXES if (path / n).is_file()), None)
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index else \
            [next(n for n in HF_WEIGHTS if (path / n).is_file())]
        out: dict[str, Tensor] = {}
        for name in files:
            out.update(_read_hf_file(path / name))
        return out

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        with atomic_folder(out) as tmp:
            for item in model_files(last):
                shutil.copy2(item, tmp / item.name)
            _save_safetensors(merged, tmp / "model.safetensors")


class DcpFolder(Format):
    name = "dcp"

    def __init__(self) -> None:
        self.keys: dict[Path, str | None] = {}  # where each checkpoint read holds its weights (None: top level)

    def read(self, path: Path) -> dict[str, Tensor]:
        found = _read_dcp(path)
        # decided on what was loaded: metadata names cannot tell {"model": {"x": ...}} from a top-level "model.x"
        key = next((k for k in DCP_WEIGHTS if isinstance(found.get(k), dict)), None)
        self.keys[path] = key
        return _tensors(found[key] if key else found, path)

    def write(self, merged: dict[str, Tensor], last: Path, out: Path) -> None:
        if last not in self.keys:
            self.read(last)
        key = self.keys[last]
        with atomic_folder(out) as tmp:
            _save_dcp({key: merged} if key else merged, tmp)
            if (last / LIGHTNING_META).is_file():  # Lightning's: its step and hyperparameters, not the trainer's state
                meta = _load(last / LIGHTNING_META)
                torch.save({k: v for k, v in meta.items() if k not in LIGHTNING_DROP}, tmp / LIGHTNING_META)


def _probe(path: Path) -> tuple[Format, int | None]:
    """The format of one checkpoint, found by what it holds, and the step it records (None: none). Files are mapped,
    not read: a probe costs their metadata."""
    if _is_hf(path):
        return HfFolder(), _trainer_step(path)
    if _is_dcp(path):
        _dcp_metadata(path)
        meta = path / LIGHTNING_META
        return DcpFolder(), (_as_step(_load(meta).get("global_step")) if meta.is_file() else None)
    found = _load(path, mmap=True)
    if snapshots.is_snapshot(found):
        return Snapshot(), found["step"]
    if isinstance(found.get("state_dict"), dict) and ("global_step" in found or "pytorch-lightning_version" in found):
        return LightningFile(), _as_step(found.get("global_step"))
    if path.suffix == ".ckpt":
        raise UserError(f"{path} has no state_dict and global_step: not a Lightning checkpoint")
    _tensors(found, path)
    return TorchFile(), None


# ---- finding and ordering a series ----

@dataclass
class Series:
    format: Format
    checkpoints: list[Checkpoint]
    in_order: bool = False  # in the order given, steps unknown
    notes: list[str] = field(default_factory=list)  # what the CLI tells the user (a final model left out)

    @property
    def steps(self) -> list[int | None]:
        return [c.step for c in self.checkpoints]

    def weights(self, swa_from: int | None = None, lawa: int | None = None, ema_half_life: float | None = None,
                wsm: tuple[str, int] | None = None, power_gamma: float | None = None) -> tuple[str, np.ndarray]:
        """:func:`weights_of` over this series."""
        unordered = None if self.in_order else next((c.path for c in self.checkpoints if c.step is None), None)
        if unordered is not None and any(c.marked for c in self.checkpoints):
            # some record their step: one that does not is not of this series (a final model, a merge's output)
            bare = re.search(r"\d", unordered.name) is not None
            raise UserError(f"{unordered}: no step recorded in it, nor one its name states beside checkpoints that "
                            f"record or mark theirs (step-N){' (a bare number is not taken for one)' * bare}; leave "
                            "it out (a final model, or a merge's output?), or name the checkpoints oldest first with "
                            "--in-order")
        return weights_of(self.steps, swa_from, lawa, ema_half_life, unordered, wsm, power_gamma)


def find(paths: list[str | Path], in_order: bool = False) -> Series:
    """The format and the checkpoints of a series given as files, folders, or directories holding them, ordered by
    step (or, with ``in_order``, as given: each path one checkpoint, oldest first; those whose step is unknown last,
    as given, for the averages that need no order). Refuses, in one line, an empty or mixed series, two checkpoints
    at one step."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"no such checkpoint: {', '.join(missing)}")
    notes: list[str] = []
    members = [m for p in paths for m in _expand(p, in_order, notes)]
    seen: set[Path] = set()
    for m in members:
        if m.resolve() in seen:
            raise UserError(f"{m} is given twice; name each checkpoint once")
        seen.add(m.resolve())
    probed = [(m, *_probe(m)) for m in members]
    kinds = {fmt.name: m for m, fmt, _ in probed}
    if len(kinds) > 1:
        which = ", ".join(f"{m} is {k}" for k, m in kinds.items())
        raise UserError(f"the checkpoints are of different formats ({which}); merge one series of one format")
    checkpoints = ([Checkpoint(m, None, False) for m in members] if in_order
                   else _by_step([(m, s) for m, _, s in probed]))
    return Series(probed[0][1], checkpoints, in_order, notes)


def _expand(path: Path, in_order: bool, notes: list[str]) -> list[Path]:
    """The checkpoints ``path`` stands for: itself (a file or a checkpoint folder), or those it holds (an HF
    output_dir's checkpoint folders, a run's snapshots, a folder of checkpoint files or of DCP folders)."""
    if path.is_file() or (in_order and _is_checkpoint(path)):
        return [path]
    if in_order:
        raise UserError(f"--in-order takes the checkpoints one by one, oldest first, and {path} is a folder of them: "
                        "name each")
    inner = sorted(p for p in path.iterdir() if p.is_dir() and _is_checkpoint(p))
    if inner:
        if _is_hf(path):
            weights = next(n for n in (*HF_WEIGHTS, *HF_INDEXES) if (path / n).is_file())
            notes.append(f"{path} holds a model of its own ({weights}) beside its checkpoint folders; it records no "
                         "step, so it is not part of the series (to average it too, name the checkpoints and then it "
                         "with --in-order)")
        if (path / snapshots.FOLDER).is_dir():
            notes.append(f"{path / snapshots.FOLDER} is a series of its own, not merged here: give it to merge it")
        return inner
    if _is_checkpoint(path):
        return [path]
    folder = path / snapshots.FOLDER if (path / snapshots.FOLDER).is_dir() else path
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES and p.name[0] != ".")
    if not files:
        raise UserError(f"{path} holds no checkpoints (checkpoint-N/ folders, torch.distributed.checkpoint folders, "
                        f"{', '.join(FILE_SUFFIXES)} files)")
    return files


def name_step(name: str) -> tuple[int | None, str | None]:
    """The step a checkpoint's name states unambiguously, and the name's template where the step is its only
    number (``model_#``), for checking that a series shares one: ``checkpoint-N`` or ``step=N`` (``step-N``,
    ``stepN``, ``step_N``), else the name's only number unless it is an epoch's. Pure.

    >>> name_step("step500-loss2.31"), name_step("checkpoint-1500"), name_step("model_10")
    ((500, None), (1500, None), (10, 'model_#'))
    >>> name_step("model_final"), name_step("epoch=3"), name_step("gpt2-100")
    ((None, None), (None, None), (None, None))
    """
    marked = {int(n) for n in _STEP_WORD.findall(name)}
    if marked:
        return (marked.pop(), None) if len(marked) == 1 else (None, None)
    numbers = re.findall(r"\d+", name)
    if len(numbers) != 1 or re.search(r"epoch[-_=]?\d", name, re.IGNORECASE):
        return None, None
    return int(numbers[0]), re.sub(r"\d+", "#", name)


def _by_step(found: list[tuple[Path, int | None]]) -> list[Checkpoint]:
    """The checkpoints in order of the step each records, else of the one its name states (those with neither
    last, as given); refuses names whose only number may count different things, and two checkpoints at one step."""
    checkpoints, templates, bare = [], {}, []
    for path, recorded in found:
        step, template = (recorded, None) if recorded is not None else \
            name_step(path.name if path.is_dir() else path.stem)
        checkpoints.append(Checkpoint(path, step, template is None and step is not None))
        bare.append(template is not None)
        templates.setdefault(template, path)
    if any(c.step is not None and not b for c, b in zip(checkpoints, bare)):
        # beside checkpoints whose step is recorded or marked (step-N), a bare number in a name (lawa2.pt, a
        # merge's output) is no step: such a checkpoint is refused by every average, never slipped into the order
        checkpoints = [Checkpoint(c.path, None, False) if b else c for c, b in zip(checkpoints, bare)]
        templates = {}
    templates.pop(None, None)
    if len(templates) > 1:
        a, b = list(templates.values())[:2]
        raise UserError(f"{a.name} and {b.name}: the numbers in their names are not marked as steps (step-N) and may "
                        "count different things; rename them, or name them oldest first with --in-order")
    checkpoints.sort(key=lambda c: math.inf if c.step is None else c.step)  # stable: the unknown ones as given
    for a, b in zip(checkpoints, checkpoints[1:]):
        if a.step is not None and a.step == b.step:
            raise UserError(f"{a.path} and {b.path} were both saved at step {a.step}: not one series; leave one out")
    return checkpoints


def _no_step(path: Path) -> str:
    return (f"{path}: no step recorded in it, nor one its name states unambiguously (checkpoint-N, step-N, or a "
            "single number), so its place in the series is unknown; name the checkpoints oldest first with --in-order "
            "(then only --lawa K applies), or leave it out")


# ---- the weights of an average ----

def weights_of(steps: list[int | None], swa_from: int | None = None, lawa: int | None = None,
               ema_half_life: float | None = None, unordered: Path | None = None, wsm: tuple[str, int] | None = None,
               power_gamma: float | None = None) -> tuple[str, np.ndarray]:
    """The label and the weights over the series of one average (exactly one of them; ``wsm``: a decay shape and a
    window of K checkpoint intervals). ``unordered``: a checkpoint whose place in the series is unknown (no step),
    refused by every average but the uniform mean of the whole series, which any order gives. Pure but for errors."""
    n = len(steps)
    if sum(x is not None for x in (swa_from, lawa, ema_half_life, wsm, power_gamma)) != 1:
        raise UserError("choose one average: --swa-from STEP, --lawa K, --ema-half-life STEPS, --wsm SHAPE --window K "
                        "or --power-gamma G")
    if wsm is not None or power_gamma is not None:
        return _decay_merge(steps, unordered, wsm, power_gamma)
    if lawa is not None:
        if lawa < 1:
            raise UserError(f"--lawa K must be >= 1 (the last K checkpoints), got {lawa}")
        if lawa > n:
            raise UserError(f"--lawa {lawa}: the series holds {n} checkpoint{'s' * (n > 1)}")
        if unordered is not None and lawa < n:
            raise UserError(_no_step(unordered))
        return f"LAWA, last {lawa} checkpoints", _evenly_spaced(steps, lawa_weights(list(range(n)), n, lawa))
    if unordered is not None:
        raise UserError(_no_step(unordered))
    if any(s is None for s in steps):
        raise UserError("--swa-from and --ema-half-life need the step of every checkpoint, unknown here (--in-order "
                        "takes the order given, not steps); use --lawa K")
    if swa_from is not None:
        if swa_from < 0:
            raise UserError(f"--swa-from is a step, >= 0; got {swa_from}")
        first = next((i for i, s in enumerate(steps) if s >= swa_from), None)
        if first is None:
            raise UserError(f"--swa-from {swa_from}: the last checkpoint is at step {steps[-1]}")
        return f"SWA from step {steps[first]}", _evenly_spaced(steps, swa_weights(n, first))
    if not (math.isfinite(ema_half_life) and ema_half_life > 0):
        raise UserError(f"--ema-half-life must be a number of steps > 0, got {ema_half_life}")
    return f"EMA, half-life {ema_half_life:g} steps", ema_weights(steps, 0.5 ** (1 / ema_half_life), 0)


def _decay_merge(steps: list[int | None], unordered: Path | None, wsm: tuple[str, int] | None,
                 power_gamma: float | None) -> tuple[str, np.ndarray]:
    """WSM's merge of the last K intervals (evenly spaced: each interval one step of the decay), or the power EMA."""
    if unordered is not None:
        raise UserError(_no_step(unordered))
    if wsm is not None:
        shape, k = wsm
        if shape not in DECAY_SHAPES:
            raise UserError(f"--wsm takes a decay shape: {', '.join(DECAY_SHAPES)}; got {shape!r}")
        if k is None or not 1 <= k < len(steps):
            raise UserError(f"--wsm needs --window K, the last K checkpoint intervals (K + 1 checkpoints): "
                            f"1 <= K < {len(steps)} here; got {k}")
        window = np.zeros(len(steps))
        window[len(steps) - k - 1:] = 1.0  # the k + 1 checkpoints of the k intervals, each one step of the decay
        _evenly_spaced(steps, window)
        return f"WSM {shape}, last {k} checkpoint intervals", wsm_weights(len(steps), k, shape)
    if any(s is None for s in steps) or not (math.isfinite(power_gamma) and power_gamma > 0) or not steps[-1] > 0:
        raise UserError(f"--power-gamma needs a number > 0 (got {power_gamma}) and the step of every checkpoint, the "
                        "last after step 0")
    return (f"power EMA, gamma {power_gamma:g} (sigma_rel {sigma_rel(power_gamma):.3f})",
            power_weights(steps, power_gamma))


def _evenly_spaced(steps: list[int | None], weights: np.ndarray) -> np.ndarray:
    """``weights`` when the checkpoints a uniform average uses are evenly spaced in steps (or their steps are
    unknown); refuses a series with a gap, whose uniform mean would weight the stretch around it less."""
    used = [steps[i] for i in np.nonzero(weights)[0]]
    if None in used or len(used) < 3:
        return weights
    gaps = sorted({b - a for a, b in zip(used, used[1:])})
    if len(gaps) > 1:
        at = next(a for a, b in zip(used, used[1:]) if b - a == gaps[-1])
        raise UserError(f"the checkpoints this average uses are not evenly spaced (every {gaps[0]} steps, but "
                        f"{gaps[-1]} after step {at}): a uniform mean would weight that stretch less; add the missing "
                        "checkpoints, or use --ema-half-life, which weights by steps")
    return weights


# ---- averaging and writing ----

def reader(series: Series) -> Callable[[int], dict[str, Tensor]]:
    """``read(i)``: the i-th checkpoint's tensors, refused in one line where they are not the first read's model
    (other names, shapes or dtypes)."""
    first: dict[str, Any] = {}

    def read(i: int) -> dict[str, Tensor]:
        path = series.checkpoints[i].path
        found = series.format.read(path)
        if not first:
            first.update(path=path, shapes={n: (tuple(t.shape), t.dtype) for n, t in found.items()})
        _same_model(found, path, first["shapes"], first["path"])
        return found
    return read


def _same_model(found: dict[str, Tensor], path: Path, shapes: dict[str, tuple], reference: Path) -> None:
    if set(found) != set(shapes):
        extra = sorted(set(found) ^ set(shapes))
        raise UserError(f"{path} holds other tensors than {reference} ({', '.join(extra[:3])}"
                        f"{', ...' if len(extra) > 3 else ''}): not checkpoints of one model")
    for name, t in found.items():
        if (tuple(t.shape), t.dtype) != shapes[name]:
            shape, dtype = shapes[name]
            raise UserError(f"{path}: {name} is {tuple(t.shape)} {t.dtype}, but {shape} {dtype} in {reference}: not "
                            "checkpoints of one model")


def candidates(paths: list[str | Path], swa_from: list[int] = (), lawa: list[int] = (),
               ema_half_life: list[float] = (), in_order: bool = False, wsm: list[tuple[str, int]] = (),
               power_gamma: list[float] = ()) -> dict[str, dict[str, Tensor]]:
    """Every average asked for, by label, as a state dict of the checkpoints' tensors: evaluate each with your own
    data and code (re-estimate BatchNorm with :func:`reestimate_bn` first) and keep the best. Streams: each average
    reads its checkpoints one at a time (the series is read once per average), so memory holds the averages made
    and one checkpoint."""
    series = find(paths, in_order)
    asked = ([{"swa_from": s} for s in swa_from] + [{"lawa": k} for k in lawa]
             + [{"ema_half_life": h} for h in ema_half_life] + [{"wsm": tuple(x)} for x in wsm]
             + [{"power_gamma": g} for g in power_gamma])
    averages = [series.weights(**kw) for kw in asked]  # every one checked before any is made
    return {label: combine(reader(series), w) for label, w in averages}


def reestimate_bn(model: torch.nn.Module, state: dict[str, Tensor], batches: Iterable,
                  device: torch.device | str | None = None) -> dict[str, Tensor]:
    """``state`` (an average, from :func:`candidates` or a merged file) with its BatchNorm running statistics
    re-estimated on ``batches`` (inputs, or tuples whose first item is the input), as the averaged weights would
    gather them: ``torch.optim.swa_utils.update_bn`` on a copy of ``model`` holding ``state``; ``model`` is left
    as it is."""
    from torch.optim.swa_utils import update_bn

    net = deepcopy(model)
    net.load_state_dict(state)
    update_bn(batches, net, device)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@dataclass
class Merged:
    """What :func:`merge` wrote: the format, the average's label, the series, its weights, and notes for the user."""

    kind: str
    label: str
    checkpoints: list[Checkpoint]
    weights: np.ndarray
    notes: list[str]


def merge(paths: list[str | Path], out: str | Path, swa_from: int | None = None, lawa: int | None = None,
          ema_half_life: float | None = None, in_order: bool = False, wsm: tuple[str, int] | None = None,
          power_gamma: float | None = None) -> Merged:
    """Average a series of checkpoints and write the result at ``out`` (a new path) in their format, atomically.
    Everything the command line says is checked before any checkpoint is read; a failed write leaves nothing."""
    out = Path(out)
    series = find(paths, in_order)
    label, w = series.weights(swa_from, lawa, ema_half_life, wsm, power_gamma)
    _check_out(out)
    merged = combine(reader(series), w)
    last = series.checkpoints[-1].path  # every average weights the last checkpoint: it was read
    made = [p for p in out.parents if not p.exists()]
    try:
        series.format.write(merged, last, out)
    except OSError as e:
        for folder in made:  # the folders made for it, deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(f"cannot write --out {out} ({e.strerror or e}); nothing was written: fix that and run the "
                        "same command again") from e
    return Merged(series.format.name, label, series.checkpoints, w, series.notes + _ema_note(label, series, w))


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} exists; choose a new path (nothing is overwritten)")
    above = next(p for p in out.parents if p.exists())
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder; choose a path in a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"cannot write --out {out}: {above} is not writable; choose a path you can write to")


def _ema_note(label: str, series: Series, w: np.ndarray) -> list[str]:
    if not label.startswith("EMA") or w[0] <= 0.5:
        return []
    span = series.steps[-1] - series.steps[0]
    return [f"the first checkpoint, {series.checkpoints[0].path.name}, weighs {w[0]:.3f}: an EMA of a series starts "
            f"from its first checkpoint, which stands for everything before it; a half-life well under the series' "
            f"{span} steps weighs it less"]


# ---- reading and writing files ----

def _load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """A torch file's dict, its tensors mapped rather than read with ``mmap`` (a file of torch's zip format)."""
    try:
        found = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # garbage, a truncated file, one that holds more than tensors and plain types
        raise UserError(_unreadable(path, e)) from e
    if not isinstance(found, dict):
        raise UserError(f"{path} holds a {type(found).__name__}, not a state dict")
    return found


def _unreadable(path: Path, e: Exception) -> str:
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.\s|\n|$)", text)
        why = textwrap.shorten(found.group(1) if found else "", 100, placeholder=" ...")
        return (f"{path} holds Python objects beside its tensors, which rbwa merge does not load (torch.load with "
                f"weights_only=True: {why}); save the model's state_dict() instead")
    return (f"{path} is not a readable checkpoint: torch.load cannot read it ({type(e).__name__}); it is damaged, "
            "truncated, or not a file torch.save wrote")


def _tensors(found: dict[str, Any], path: Path) -> dict[str, Tensor]:
    tensors = {k: v for k, v in found.items() if isinstance(v, Tensor)}
    if not tensors:
        raise UserError(f"{path} holds no tensors at its top level ({', '.join(map(str, list(found)[:3]))}): not a "
                        "state dict, an rbwa snapshot or a Lightning checkpoint")
    return tensors


def _as_step(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, Tensor)) and not isinstance(value, bool) else None


def _is_hf(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in (*HF_WEIGHTS, *HF_INDEXES))


def _is_dcp(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def _is_checkpoint(path: Path) -> bool:
    return _is_hf(path) or _is_dcp(path)


def _trainer_step(path: Path) -> int | None:
    """The ``global_step`` of an HF checkpoint's ``trainer_state.json`` (None: absent or unreadable)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return _as_step(json.loads((path / "trainer_state.json").read_text()).get("global_step"))
    return None


def _read_hf_file(path: Path) -> dict[str, Tensor]:
    if path.suffix != ".safetensors":
        return _tensors(_load(path), path)
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}); it is damaged or "
                        "truncated") from e


def model_files(folder: Path) -> list[Path]:
    """The files of an HF checkpoint folder a merged folder keeps: config, tokenizer, generation config, custom code;
    not the weights, nor any trainer or callback state (optimizer, scheduler, RNG, ``trainer_state.json``,
    ``training_args.bin``, the callbacks' ``rbwa_callback*.pt``)."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix not in STATE_SUFFIXES
            and p.name not in (*TRAINER_FILES, *HF_INDEXES) and not p.name.startswith(".")]


def _save_safetensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
    except Exception as e:  # a failed write (disk full) comes as safetensors' own error
        if type(e).__name__ != "SafetensorError":
            raise
        raise OSError(str(e)) from e


@contextlib.contextmanager
def _quiet_dcp() -> Iterator[None]:
    """torch.distributed.checkpoint in one process without a process group, without its warning that it is so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _dcp_metadata(path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise UserError(f"{path}: its torch.distributed.checkpoint metadata is not readable "
                        f"({type(e).__name__})") from e


def _read_dcp(path: Path) -> dict[str, Any]:
    """A distributed checkpoint whole, its shards joined, in this process (no process group)."""
    try:
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    except ImportError as e:  # torch < 2.3
        raise UserError("reading torch.distributed.checkpoint folders needs torch >= 2.3") from e
    with tempfile.TemporaryDirectory() as tmp, _quiet_dcp():
        whole = Path(tmp) / "whole.pt"
        try:
            dcp_to_torch_save(path, whole)
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            raise UserError(f"{path} is not a readable torch.distributed.checkpoint ({type(e).__name__}); it is "
                            "damaged or truncated") from e
        return _load(whole)


def _save_dcp(state: dict[str, Any], folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with _quiet_dcp():
            dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    except CheckpointException as e:  # the failed write inside, as what it is
        failure = next(iter(e.failures.values()), None)
        cause = failure[0] if isinstance(failure, tuple) else failure
        raise (cause if isinstance(cause, OSError) else OSError(str(cause))) from e


def merge_command(paths: list[str | Path], out: str | Path, swa_from: int | None = None, lawa: int | None = None,
                  ema_half_life: float | None = None, wsm: str | None = None, window: int | None = None,
                  power_gamma: float | None = None, in_order: bool = False) -> Merged:
    """``rbwa merge``: :func:`merge` (``wsm``, a decay shape, goes with ``window`` K), then what it averaged and
    wrote, and its notes, in lines."""
    if (wsm is None) != (window is None):
        raise UserError("--wsm SHAPE and --window K go together: the decay's shape over the last K intervals")
    done = merge(paths, out, swa_from, lawa, ema_half_life, in_order=in_order,
                 wsm=None if wsm is None else (wsm, window), power_gamma=power_gamma)
    used = [c for c, w in zip(done.checkpoints, done.weights, strict=True) if w]
    print(f"{done.label}: {len(used)} of {len(done.checkpoints)} {done.kind} checkpoints, from {used[0].path.name} to "
          f"{used[-1].path.name}; wrote {out}")
    for note in done.notes:
        print(f"note: {note}")
    return done
