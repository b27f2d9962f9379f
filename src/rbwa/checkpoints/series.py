"""A series of checkpoints: found from the paths given (files, folders, or directories holding them), each probed for
its format by what it holds (not by its file name), and ordered by the step each records, else by a step its name
states unambiguously (:func:`name_step`); a checkpoint with neither is refused, unless ``in_order`` takes the order
given (then only LAWA, which needs no steps)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rbwa.checkpoints import snapshots
from rbwa.checkpoints.averages import weights_of
from rbwa.checkpoints.dcp_folder import DcpFolder, dcp_step, is_dcp
from rbwa.checkpoints.format import Format, as_step, load, tensors
from rbwa.checkpoints.hf_folder import HF_INDEXES, HF_WEIGHTS, HfFolder, is_hf, trainer_step
from rbwa.checkpoints.lightning_file import LightningFile, is_lightning
from rbwa.checkpoints.snapshots import Snapshot
from rbwa.checkpoints.torch_file import TorchFile
from rbwa.errors import UserError

FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # the files a folder of checkpoints is searched for
_STEP_WORD = re.compile(r"(?<![a-z])(?:step|checkpoint)[-_=]?(\d+)", re.IGNORECASE)


@dataclass
class Checkpoint:
    path: Path
    step: int | None  # the optimizer step it was saved at (None: unknown: neither recorded nor named, or in_order)
    marked: bool = True  # the step is recorded in it or marked in its name (step-N), not a name's bare number


def probe(path: Path) -> tuple[Format, int | None]:
    """The format of one checkpoint, found by what it holds, and the step it records (None: none). Files are mapped,
    not read: a probe costs their metadata."""
    if is_hf(path):
        return HfFolder(), trainer_step(path)
    if is_dcp(path):
        return DcpFolder(), dcp_step(path)
    found = load(path, mmap=True)
    if snapshots.is_snapshot(found):
        return Snapshot(), found["step"]
    if is_lightning(found):
        return LightningFile(), as_step(found.get("global_step"))
    if path.suffix == ".ckpt":
        raise UserError(f"{path} has no state_dict and global_step: not a Lightning checkpoint")
    tensors(found, path)
    return TorchFile(), None


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder (Hugging Face's, or a distributed checkpoint)."""
    return is_hf(path) or is_dcp(path)


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
    probed = [(m, *probe(m)) for m in members]
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
    if path.is_file() or (in_order and is_checkpoint(path)):
        return [path]
    if in_order:
        raise UserError(f"--in-order takes the checkpoints one by one, oldest first, and {path} is a folder of them: "
                        "name each")
    inner = sorted(p for p in path.iterdir() if p.is_dir() and is_checkpoint(p))
    if inner:
        if is_hf(path):
            weights = next(n for n in (*HF_WEIGHTS, *HF_INDEXES) if (path / n).is_file())
            notes.append(f"{path} holds a model of its own ({weights}) beside its checkpoint folders; it records no "
                         "step, so it is not part of the series (to average it too, name the checkpoints and then it "
                         "with --in-order)")
        if (path / snapshots.FOLDER).is_dir():
            notes.append(f"{path / snapshots.FOLDER} is a series of its own, not merged here: give it to merge it")
        return inner
    if is_checkpoint(path):
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
