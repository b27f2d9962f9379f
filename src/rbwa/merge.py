"""Post-hoc averages of any trainer's checkpoints (``rbwa merge``): SWA, LAWA or an EMA of a series of checkpoints
as users have them, written back in the format they came in, loadable without rbwa.

Formats, each found by what it holds:

* ``hf``: a Hugging Face ``output_dir`` of ``checkpoint-N/`` folders (``model.safetensors``, sharded safetensors with
  their index, or ``pytorch_model.bin``), or the folders themselves; written as a folder with ``model.safetensors``
  and the last checkpoint's config files, for ``from_pretrained``;
* ``lightning``: Lightning ``.ckpt`` files (``state_dict``, ``global_step``); written as a ``.ckpt`` of the last
  one with the merged ``state_dict`` and no optimizer state, for ``load_from_checkpoint``;
* ``torch``: plain ``torch.save`` state dicts (``.pt``, ``.pth``, ``.bin``), stepped by the number in their names;
* ``rbwa``: ``rbwa train`` snapshots (``RUN/snapshots/`` or the run directory); written as a plain state dict;
* ``dcp``: ``torch.distributed.checkpoint`` folders (a ``.metadata`` file beside the shards), saved sharded by any
  number of processes (FSDP2's DTensors), read whole in one process; the weights are what the checkpoint holds under
  ``model`` (``get_state_dict`` as torchtitan and rbwa's README save it) or ``state_dict`` (Lightning's
  ``ModelParallelStrategy``, whose ``meta.pt`` gives the step), or its top-level tensors; written as a
  ``torch.distributed.checkpoint`` folder of the merged weights under the same key, without optimizer state, for
  ``dcp.load({"model": model.state_dict()}, checkpoint_id=...)`` at any process count.

The weights of each average come from :mod:`rbwa.posthoc` (one home for SWA, LAWA and EMA). Floating-point tensors
are averaged (in float64, written in their own dtype); others (step counters, ``num_batches_tracked``, token ids)
are the last checkpoint's. BatchNorm running statistics are averaged like any float tensor, which is not what the
averaged weights would gather: :func:`reestimate_bn` re-estimates them on data you give (``update_bn``), for a
state dict from :func:`candidates` or a merged file.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rbwa.errors import UserError
from rbwa.averaging.weights import ema_weights, lawa_weights, swa_weights

PLAIN_SUFFIXES = (".pt", ".pth", ".bin")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_SKIP = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin", "rng_state")
DCP_WEIGHTS = ("model", "state_dict")  # where a distributed checkpoint keeps the model's weights, if under a key
LIGHTNING_META = "meta.pt"  # beside a Lightning distributed checkpoint's shards: everything but the tensors
LIGHTNING_DROP = ("optimizer_states", "lr_schedulers", "loops", "callbacks")  # trainer state a merge does not keep


@dataclass
class Checkpoint:
    path: Path
    step: int | None  # the optimizer step it was saved at, where the format or its name says


def _number(path: Path) -> int | None:
    found = re.findall(r"\d+", path.stem if path.is_file() else path.name)
    return int(found[-1]) if found else None


def find(paths: list[Path]) -> tuple[str, list[Checkpoint]]:
    """The format and the checkpoints of a series given as files, folders, or one directory holding them,
    ordered by step. Refuses an empty or mixed series in one line."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"no such checkpoint: {', '.join(missing)}")
    if len(paths) == 1 and paths[0].is_dir() and not _is_hf_checkpoint(paths[0]):
        folder = paths[0]
        if (folder / "snapshots").is_dir():
            folder = folder / "snapshots"
        inside = sorted([p for p in folder.iterdir() if p.is_dir() and (_is_hf_checkpoint(p) or _is_dcp(p))]
                        or [p for p in folder.iterdir() if p.is_file() and p.suffix in (".ckpt", *PLAIN_SUFFIXES)
                            and not p.name.startswith(".")])
        if _is_dcp(folder):  # one distributed checkpoint, not a folder of them
            inside = [folder]
        if not inside:
            raise UserError(f"{paths[0]} holds no checkpoints (checkpoint-N/ folders, torch.distributed.checkpoint "
                            "folders, .ckpt, .pt, .pth or .bin files)")
        paths = inside
    kinds = {_kind(p) for p in paths}
    if len(kinds) > 1:
        raise UserError(f"the checkpoints are of different formats ({', '.join(sorted(kinds))}); merge one series")
    kind = kinds.pop()
    found = [Checkpoint(p, _step(kind, p)) for p in paths]
    if all(c.step is not None for c in found):
        found.sort(key=lambda c: c.step)
        steps = [c.step for c in found]
        if len(set(steps)) < len(steps):
            raise UserError(f"two checkpoints of the series were saved at the same step ({steps})")
    return kind, found


def _is_hf_checkpoint(path: Path) -> bool:
    return path.is_dir() and (any((path / name).exists() for name in HF_WEIGHTS)
                              or (path / "model.safetensors.index.json").exists())


def _is_dcp(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def _kind(path: Path) -> str:
    if path.is_dir():
        if _is_hf_checkpoint(path):
            return "hf"
        if _is_dcp(path):
            return "dcp"
        raise UserError(f"{path} is a folder without model weights (model.safetensors or pytorch_model.bin)")
    if path.suffix == ".ckpt":
        return "lightning"
    if path.suffix in PLAIN_SUFFIXES:
        return "rbwa" if path.parent.name == "snapshots" and path.stem.isdigit() else "torch"
    raise UserError(f"{path}: not a checkpoint rbwa merge reads (.ckpt, .pt, .pth, .bin, or a checkpoint-N/ folder)")


def _step(kind: str, path: Path) -> int | None:
    if kind == "lightning" or (kind == "dcp" and (path / LIGHTNING_META).is_file()):
        step = _load_torch(path if kind == "lightning" else path / LIGHTNING_META).get("global_step")
        return int(step) if step is not None else _number(path)
    return _number(path)


def _dcp_key(path: Path) -> str | None:
    """The key under which a distributed checkpoint holds the model's weights (None: at its top level), read from
    its metadata alone."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        names = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as e:
        raise UserError(f"{path}: its torch.distributed.checkpoint metadata is not readable "
                        f"({type(e).__name__})") from e
    return next((key for key in DCP_WEIGHTS if any(n.startswith(key + ".") for n in names)), None)


def _read_dcp(path: Path) -> dict[str, Any]:
    """A distributed checkpoint whole, its shards joined, in this process (no process group): what it holds
    under its weights' key, or its top-level tensors."""
    try:
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    except ImportError as e:  # torch < 2.3
        raise UserError("reading torch.distributed.checkpoint folders needs torch >= 2.3") from e
    key = _dcp_key(path)
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        try:
            dcp_to_torch_save(path, whole)
            found = torch.load(whole, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path} is not a readable torch.distributed.checkpoint ({type(e).__name__}: "
                            f"{str(e)[:120]})") from e
    return found[key] if key else found


def _load_torch(path: Path) -> dict[str, Any]:
    try:
        found = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, or one that holds more than tensors and plain types
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:120]})") from e
    if not isinstance(found, dict):
        raise UserError(f"{path} holds a {type(found).__name__}, not a state dict")
    return found


def read_weights(kind: str, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The model's tensors in one checkpoint, by name."""
    path = checkpoint.path
    if kind == "hf":
        from safetensors.torch import load_file

        index = path / "model.safetensors.index.json"
        if index.exists():
            out: dict[str, torch.Tensor] = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                out.update(load_file(path / shard))
            return out
        if (path / "model.safetensors").exists():
            return load_file(path / "model.safetensors")
        return _load_torch(path / "pytorch_model.bin")
    found = _read_dcp(path) if kind == "dcp" else _load_torch(path)
    if kind == "lightning":
        if "state_dict" not in found:
            raise UserError(f"{path} has no state_dict: not a Lightning checkpoint")
        return found["state_dict"]
    if kind == "rbwa":
        return {**found["params"], **found["buffers"]}
    tensors = {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path} holds no tensors at its top level: not a plain state dict")
    return tensors


def check_same_model(series: list[dict[str, torch.Tensor]], checkpoints: list[Checkpoint]) -> None:
    """Refuse, in one line, checkpoints of different architectures: other names, shapes or dtypes."""
    first = series[0]
    for weights, c in zip(series[1:], checkpoints[1:], strict=True):
        if set(weights) != set(first):
            extra = sorted(set(weights) ^ set(first))
            raise UserError(f"{c.path} holds other tensors than {checkpoints[0].path} ({', '.join(extra[:3])}"
                            f"{', ...' if len(extra) > 3 else ''}): not checkpoints of one model")
        for name, t in weights.items():
            if t.shape != first[name].shape or t.dtype != first[name].dtype:
                raise UserError(f"{c.path}: {name} is {tuple(t.shape)} {t.dtype}, but {tuple(first[name].shape)} "
                                f"{first[name].dtype} in {checkpoints[0].path}: not checkpoints of one model")


def weights_of(steps: list[int | None], swa_from: int | None = None, lawa: int | None = None,
               ema_half_life: float | None = None) -> tuple[str, np.ndarray]:
    """The label and the weights over the series of one average (exactly one of the three). Pure but for errors."""
    n = len(steps)
    given = [x is not None for x in (swa_from, lawa, ema_half_life)]
    if sum(given) != 1:
        raise UserError("choose one average: --swa-from STEP, --lawa K or --ema-half-life STEPS")
    if lawa is not None:
        if not 1 <= lawa <= n:
            raise UserError(f"--lawa {lawa}: the series holds {n} checkpoint{'s' * (n > 1)}")
        return f"LAWA, last {lawa} checkpoints", _evenly_spaced(steps, lawa_weights(list(range(n)), n, lawa))
    if any(s is None for s in steps):
        raise UserError("--swa-from and --ema-half-life need the step of every checkpoint, and a name here has no "
                        "number; use --lawa K, or name the files by step")
    if swa_from is not None:
        first = next((i for i, s in enumerate(steps) if s >= swa_from), None)
        if first is None:
            raise UserError(f"--swa-from {swa_from}: the last checkpoint is at step {steps[-1]}")
        return f"SWA from step {steps[first]}", _evenly_spaced(steps, swa_weights(n, first))
    if ema_half_life <= 0:
        raise UserError(f"--ema-half-life must be > 0, got {ema_half_life}")
    return f"EMA, half-life {ema_half_life:g} steps", ema_weights(steps, 0.5 ** (1 / ema_half_life), 0)


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


def combine(series: list[dict[str, torch.Tensor]], weights: np.ndarray) -> dict[str, torch.Tensor]:
    """The weighted mean of each floating-point tensor (in float64, returned in its own dtype); every other
    tensor as the last checkpoint holds it."""
    out = {}
    for name, last in series[-1].items():
        if not last.is_floating_point():
            out[name] = last.clone()
            continue
        total = torch.zeros_like(last, dtype=torch.float64)
        for w, weights_ in zip(weights, series, strict=True):
            if w:
                total += float(w) * weights_[name].double()
        out[name] = total.to(last.dtype)
    return out


def candidates(paths: list[str | Path], swa_from: list[int] = (), lawa: list[int] = (),
               ema_half_life: list[float] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """Every average asked for, by label, as a state dict of the checkpoints' tensors: evaluate each with your own
    data and code (re-estimate BatchNorm with ``torch.optim.swa_utils.update_bn`` first) and keep the best."""
    kind, checkpoints = find([Path(p) for p in paths])
    series = [read_weights(kind, c) for c in checkpoints]
    check_same_model(series, checkpoints)
    steps = [c.step for c in checkpoints]
    out = {}
    for kw in ([{"swa_from": s} for s in swa_from] + [{"lawa": k} for k in lawa]
               + [{"ema_half_life": h} for h in ema_half_life]):
        label, w = weights_of(steps, **kw)
        out[label] = combine(series, w)
    return out


def reestimate_bn(model: torch.nn.Module, state: dict[str, torch.Tensor], batches: Iterable,
                  device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """``state`` (an average, from :func:`candidates` or a merged file) with its BatchNorm running statistics
    re-estimated on ``batches`` (inputs, or tuples whose first item is the input), as the averaged weights would
    gather them: ``torch.optim.swa_utils.update_bn`` on a copy of ``model`` holding ``state``; ``model`` is left
    as it is."""
    from torch.optim.swa_utils import update_bn

    net = deepcopy(model)
    net.load_state_dict(state)
    update_bn(batches, net, device)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def merge(paths: list[str | Path], out: str | Path, swa_from: int | None = None, lawa: int | None = None,
          ema_half_life: float | None = None) -> tuple[str, str, list[Checkpoint], np.ndarray]:
    """Average a series of checkpoints and write the result at ``out`` in their format; returns (format, label,
    the checkpoints, their weights). Everything is checked before anything is written; ``out`` must not exist."""
    out = Path(out)
    kind, checkpoints = find([Path(p) for p in paths])
    label, w = weights_of([c.step for c in checkpoints], swa_from, lawa, ema_half_life)
    if out.exists():
        raise UserError(f"--out {out} exists; choose a new path (nothing is overwritten)")
    series = [read_weights(kind, c) for c in checkpoints]
    check_same_model(series, checkpoints)
    merged = combine(series, w)
    last = checkpoints[-1].path
    if kind == "hf":
        from safetensors.torch import save_file

        out.mkdir(parents=True)
        for item in last.iterdir():  # the model's config, tokenizer and generation files, not the trainer's state
            if item.is_file() and not item.name.startswith(HF_SKIP) and item.name not in HF_WEIGHTS \
                    and not item.name.startswith("model-") and item.name != "model.safetensors.index.json":
                shutil.copy2(item, out / item.name)
        save_file({k: v.contiguous() for k, v in merged.items()}, out / "model.safetensors", metadata={"format": "pt"})
    elif kind == "lightning":
        saved = _load_torch(last)
        keep = {k: v for k, v in saved.items() if k not in LIGHTNING_DROP}
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**keep, "state_dict": merged}, out)
    elif kind == "dcp":
        import torch.distributed.checkpoint as dcp

        key = _dcp_key(last)
        dcp.save({key: merged} if key else merged, checkpoint_id=str(out), no_dist=True)
        if (last / LIGHTNING_META).is_file():  # Lightning's: its step and hyperparameters, not the trainer's state
            meta = _load_torch(last / LIGHTNING_META)
            torch.save({k: v for k, v in meta.items() if k not in LIGHTNING_DROP}, out / LIGHTNING_META)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(merged, out)
    return kind, label, checkpoints, w
