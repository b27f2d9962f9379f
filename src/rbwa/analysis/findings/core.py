"""The comparison core of the findings: runs and experiments as ``rbwa reproduce`` wrote them, the per-seed measures,
and a :class:`Finding`: one claim put to paired runs (:func:`compare`), with where their machines and commits differ.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbwa.analysis.stats import contrast, mean_ci, paired_p, verdict, within
from rbwa.errors import UserError
from rbwa.io import read_jsonl

LAST_EPOCHS = 5  # the second measure: mean over the last epochs, which a single noisy final epoch cannot sway
LOSS_TOLERANCE = 1e-4  # training losses closer than this at every epoch of every seed count as no difference
TEXT = "validation characters"  # a language model's test items
ITEM_TOLERANCE = 1e-4  # an identity's twins may predict this fraction of the test items differently (at least one)
ORDER = ["fig3", "fig5", "table1", "variants", "controls", "alternatives", "writeback"]  # the paper's, then ours
LATER = ["posthoc", "posthoc-cifar100", "lm", "lm-tuned"]  # after them: CIFAR-10 before CIFAR-100, then the GPT


def seeds_text(seeds: list[int] | tuple[int, ...]) -> str:
    """'seed 3' or 'seeds 3, 4'. Pure."""
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


@dataclass
class Run:
    path: Path
    setting: str
    label: str
    seed: int
    config: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.summary is not None:
            return self.summary.get("status", "finished")
        return "incomplete" if self.metrics else "not run"

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass
class Experiment:
    name: str
    title: str
    setting: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)  # the flags given to `rbwa reproduce`
    runs: list[Run] = field(default_factory=list)

    def groups(self) -> dict[tuple[str, str], list[Run]]:
        out: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for r in self.runs:
            out[(r.setting, r.label)].append(r)
        return out

    @property
    def text(self) -> bool:
        """A language model's experiment (lm, lm-tuned): measured by validation loss, with no BatchNorm."""
        return self.name in ("lm", "lm-tuned")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None


MANIFEST = {"experiment": str, "title": str, "setting": str, "preset": str, "runs": list}
ENTRY = {"run": str, "setting": str, "label": str, "seed": int}


def manifest_problem(spec: dict[str, Any]) -> str | None:
    """What makes a parsed manifest unusable (a missing key, a value of the wrong type), None where nothing does.
    Pure."""
    def wrong(d: dict[str, Any], types: dict[str, type], where: str) -> str | None:
        for key, kind in types.items():
            value = d.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):  # a bool is an int to isinstance
                return f"{where}{key!r} must be a {kind.__name__}, not {value!r}"
        return None

    if problem := wrong(spec, MANIFEST, ""):
        return problem
    if not isinstance(spec.get("overrides", {}), dict):
        return f"'overrides' must be a dict, not {spec['overrides']!r}"
    for i, entry in enumerate(spec["runs"]):
        problem = wrong(entry, ENTRY, f"runs[{i}]: ") if isinstance(entry, dict) else f"runs[{i}] is not a dict"
        if problem:
            return problem
    return None


def load_experiments(root: Path) -> list[Experiment]:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the --out of `rbwa reproduce`")
    experiments = []
    for manifest in sorted(root.glob("*.json")):
        try:  # a manifest that does not parse would drop its experiment from the report unseen
            spec = json.loads(manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{manifest} is not valid JSON ({e}); restore it, or rerun `rbwa reproduce` to rewrite "
                            "it") from None
        if not isinstance(spec, dict) or "experiment" not in spec:  # another JSON file: not ours
            continue
        problem = manifest_problem(spec)
        if problem:
            raise UserError(f"{manifest} is not an experiment manifest written by `rbwa reproduce`: {problem}")
        exp = Experiment(spec["experiment"], spec["title"], spec["setting"], spec["preset"], spec.get("overrides", {}))
        for entry in spec["runs"]:
            path = root / entry["run"]
            exp.runs.append(Run(path, entry["setting"], entry["label"], entry["seed"], _json(path / "config.json"),
                                read_jsonl(path / "metrics.jsonl"), _json(path / "summary.json")))
        experiments.append(exp)
    order = ORDER + LATER
    experiments.sort(key=lambda e: order.index(e.name) if e.name in order else len(order))
    if not experiments:
        raise UserError(f"{root} holds no experiment manifests (*.json written by `rbwa reproduce`)")
    return experiments


@dataclass
class Finding:
    """One claim put to the runs: per-seed paired differences (positive = the claim holds) under two measures."""

    claim: str
    what: str  # the difference, in words: "RBWA - SGD"
    final: dict[int, float]  # seed -> difference of the final-epoch values (the paper's measure)
    last: dict[int, float]  # seed -> difference of the means over the last LAST_EPOCHS epochs
    curve: list[float] = field(default_factory=list)  # the difference at every epoch of every seed
    tolerance: float = 0.0  # the size below which a difference counts as none
    claimed: float | None = None  # the paper's own difference, where it reports one
    digits: int = 2
    unit: str = " points"
    note: str = ""
    show_curve: bool = False  # twin comparisons always show the largest difference over the curve
    key: tuple = ()  # what is tested (metric and runs): two experiments that share runs share a test; () = unique
    machines: dict[int, str] = field(default_factory=dict)  # seed -> how its two runs' machines differ, where they do
    commits: dict[int, str] = field(default_factory=dict)  # seed -> the two runs' commits, where they differ
    # independent groups instead of pairs (final, last): (coefficient, values) each, judged by a Welch contrast
    arms: tuple[list[tuple[float, list[float]]], list[tuple[float, list[float]]]] | None = None

    @property
    def same(self) -> bool:
        return within(self.curve, self.tolerance)

    def stats(self, which: str) -> tuple[float, float, float, int]:
        if self.arms is not None:
            arms = self.arms[0 if which == "final" else 1]
            mean, lo, hi, _ = contrast(arms)
            return mean, lo, hi, min(len(values) for _, values in arms)
        values = self.final if which == "final" else self.last
        mean, lo, hi = mean_ci(list(values.values()))
        return mean, lo, hi, len(values)

    def verdict(self, which: str = "final") -> str:
        _, lo, hi, n = self.stats(which)
        return verdict(lo, hi, self.claimed if which == "final" else None, self.same, n)

    @property
    def p(self) -> float:
        return contrast(self.arms[0])[3] if self.arms is not None else paired_p(list(self.final.values()))


@dataclass(frozen=True)
class Equivalence:
    """An identity put to the runs (RBWA and its base optimizer on the schedule it equals): not a test but the largest
    gap at any epoch of any seed, in test items (images, or characters of the validation split) predicted correctly
    and in test loss, against a tolerance. It holds when the items are within :data:`ITEM_TOLERANCE` of the test
    items (at least one) and no run of the pair diverged; the loss gap and the final-epoch difference are shown
    beside it."""

    claim: str
    seeds: int
    items: int  # the test split's size: images, or validation characters
    item_gap: int  # the largest difference in items predicted correctly
    loss_gap: float  # the largest difference in test (validation) loss, nats
    kind: str  # "test images" or "validation characters"
    final: dict[int, float] = field(default_factory=dict)  # seed -> final test accuracy difference (points)
    diverged: tuple[int, ...] = ()  # seeds in which a run of the pair diverged: no identity there
    machines: dict[int, str] = field(default_factory=dict)  # seed -> how its two runs' machines differ
    commits: dict[int, str] = field(default_factory=dict)  # seed -> its two runs' commits, where they differ

    @property
    def item_tolerance(self) -> int:
        return max(1, int(ITEM_TOLERANCE * self.items))

    @property
    def holds(self) -> bool:
        return self.seeds > 0 and not self.diverged and self.item_gap <= self.item_tolerance


def twin_of(label: str) -> str | None:
    """The method a control's label says it equals ("sgd (harmonic LR, = rbwa)" -> "rbwa"), None for another. Pure."""
    return label[label.rindex("= ") + 2:-1] if label.endswith(")") and ", = " in label else None


def identity_claim(label: str) -> str:
    """A control that equals a method, as an identity: "sgd (harmonic LR, = rbwa)" -> "rbwa = sgd on the harmonic LR".
    Pure."""
    base, inner = label.split(" (", 1)
    schedule = inner.rsplit(", = ", 1)[0]
    the = "" if "'s " in schedule else "the "  # "rbwa-e's LR" is named by its owner
    return f"{twin_of(label)} = {base} on {the}{schedule}"


def equivalence(claim: str, a: list[Run], b: list[Run]) -> Equivalence | None:
    """The identity that ``a`` and ``b`` train the same weights, seed by seed, from their curves; None where no seed
    has both runs finished or the test split's size was not recorded. A seed whose run of one side diverged counts
    against it."""
    items = _test_images(a + b)
    seeds = sorted({r.seed for r in a if r.finished} & {r.seed for r in b if r.finished})
    if not seeds or not items:
        return None
    text = any(r.config and r.config.get("model") == "gpt" for r in a + b)
    gap = max((abs(d) for d in _curve(a, b, "test_acc")), default=0.0)
    return Equivalence(claim, len(seeds), int(items), round(gap * items / 100),
                       max((abs(d) for d in _curve(a, b, "test_loss")), default=0.0),
                       TEXT if text else "test images",
                       paired_differences(measure(a, "test_acc"), measure(b, "test_acc")),
                       _diverged_against(a, b),
                       machine_differences(a, b), commit_differences(a, b))


def _diverged_against(a: list[Run], b: list[Run]) -> tuple[int, ...]:
    """The seeds where one run of a pair diverged while its twin finished: evidence against an identity (both
    diverged, or a twin never run, is not)."""
    def status(runs: list[Run]) -> dict[int, str]:
        return {r.seed: r.status for r in runs}

    sa, sb = status(a), status(b)
    return tuple(sorted(s for s in set(sa) & set(sb) if {sa[s], sb[s]} == {"diverged", "finished"}))


def measure(runs: list[Run], metric: str, last: int = 1) -> dict[int, float]:
    """Seed -> the mean of ``metric`` over the last ``last`` trained epochs (epoch >= 1) of each finished run."""
    out = {}
    for r in runs:
        values = [m[metric] for m in r.metrics if m["epoch"] > 0][-last:]
        if r.finished and values and None not in values:
            out[r.seed] = sum(values) / len(values)
    return out


def _curve(a: list[Run], b: list[Run], metric: str) -> list[float]:
    """a - b at every epoch both runs of a seed reached, over every seed both have."""
    bs = {r.seed: {m["epoch"]: m[metric] for m in r.metrics} for r in b if r.finished}
    out = []
    for r in a:
        if r.finished and r.seed in bs:
            out += [m[metric] - bs[r.seed][m["epoch"]] for m in r.metrics
                    if m.get(metric) is not None and bs[r.seed].get(m["epoch"]) is not None]
    return out


def machine(run: Run) -> tuple[Any, Any]:
    """What a run's float rounding depends on beyond its code: the CPU kind (None where it was not recorded)
    and the torch thread count."""
    versions = (run.summary or {}).get("versions", {})
    return versions.get("cpu"), versions.get("torch_threads")


def machine_differences(a: list[Run], b: list[Run]) -> dict[int, str]:
    """Seed -> how the machines of its two runs differ, for the seeds whose runs recorded different ones: their
    difference holds float rounding besides the method."""
    theirs = {r.seed: machine(r) for r in b if r.finished}
    out = {}
    for r in a:
        if r.finished and r.seed in theirs and machine(r) != theirs[r.seed]:
            (cpu, threads), (cpu_b, threads_b) = machine(r), theirs[r.seed]
            parts = ([f"CPU {cpu or 'not recorded'} against {cpu_b or 'not recorded'}"] * (cpu != cpu_b)
                     + [f"torch threads {threads} against {threads_b}"] * (threads != threads_b))
            out[r.seed] = ", ".join(parts)
    return out


def commit(run: Run) -> Any:
    """The git commit a run was trained at (None where it recorded none)."""
    return (run.summary or {}).get("versions", {}).get("git")


def commit_differences(a: list[Run], b: list[Run]) -> dict[int, str]:
    """Seed -> its two runs' commits, for the seeds whose runs were trained at different ones."""
    theirs = {r.seed: commit(r) for r in b if r.finished}
    return {r.seed: f"{commit(r)} against {theirs[r.seed]}" for r in a
            if r.finished and r.seed in theirs and commit(r) != theirs[r.seed]}


def provenance(runs: list[Run]) -> str:
    """Where a group of runs was trained, in words: its commits and CPU kinds."""
    done = [r for r in runs if r.finished]
    commits = sorted({str(commit(r)) for r in done})
    cpus = sorted({str(machine(r)[0] or "not recorded") for r in done})
    return f"git {', '.join(commits)} on CPU {'; '.join(cpus)}"


def dataset_name(cfg: dict[str, Any] | None) -> str:
    """The data a config trained on, as a reader names it: CIFAR-10, CIFAR-100, or the dataset as recorded."""
    if cfg is None:
        return "?"
    name = folder_name(cfg["dataset"]) or cfg["dataset"]
    key = name.lower().replace("-", "").replace("_", "")
    return "CIFAR-100" if key.startswith("cifar100") else "CIFAR-10" if key.startswith("cifar10") else name


def folder_name(dataset: str) -> str | None:
    """The folder's name in an image-folder dataset as configs record it (``folder:NAME (...)``), else None."""
    return dataset[len("folder:"):].split(" (")[0].rstrip("/").rsplit("/", 1)[-1] if dataset.startswith("folder:") \
        else None


def paired_differences(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def _test_images(runs: list[Run]) -> int | None:
    return next((r.summary.get("test_size") for r in runs if r.summary and r.summary.get("test_size")), None)


def compare(claim: str, what: str, a: list[Run], b: list[Run], metric: str = "test_acc",
            **kw: Any) -> Finding:
    """The finding that ``a`` beats ``b`` on ``metric``: higher accuracy, or lower loss for a loss metric.

    The 'no difference' tolerance: accuracies at most one test image apart, losses at most LOSS_TOLERANCE.
    """
    sign = -1.0 if metric.endswith("loss") else 1.0
    test_images = _test_images(a + b)

    def diffs(last: int) -> dict[int, float]:
        return {s: sign * d for s, d in paired_differences(measure(a, metric, last), measure(b, metric, last)).items()}

    # accuracy: at most one test image apart (a float margin keeps one image's worth inside); loss: LOSS_TOLERANCE
    tolerance = LOSS_TOLERANCE if sign < 0 else (100.0 / test_images * (1 + 1e-9) if test_images else 0.0)
    key = (metric, tuple(sorted(str(r.path) for r in a)), tuple(sorted(str(r.path) for r in b)))
    return Finding(claim, what, diffs(1), diffs(LAST_EPOCHS), _curve(a, b, metric), tolerance,
                   digits=4 if sign < 0 else 2, unit="" if sign < 0 else " points", key=key,
                   machines=machine_differences(a, b), commits=commit_differences(a, b), **kw)
