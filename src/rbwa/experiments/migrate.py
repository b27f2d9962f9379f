"""`rbwa migrate OUT`: rename a sweep's runs made before datasets were named by what they are (rbwa < 0.2).

Those runs hashed the literal ``--dataset`` string (a path of the machine they ran on) into their names
and wrote machine paths into config.json and the manifests. Migration recomputes every run's name from
its manifest, as ``rbwa reproduce`` now would, checks that the run's saved config is the config of that
name, renames the directory, and rewrites config.json and the manifests without machine paths. Metrics,
summaries and checkpoints are not touched. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.experiments.grids import EXPERIMENTS, expand
from rbwa.experiments.runner import manifest
from rbwa.io import atomic_write_json
from rbwa.training.config import MACHINE_KEYS, differing_keys, identify, resolve


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dataset(root: Path, spec: dict[str, Any], dataset: str | None) -> str | None:
    """The --dataset to name the runs with: the one given, else the one the manifest or its runs recorded."""
    if dataset:
        return dataset
    recorded = spec.get("overrides", {}).get("dataset")
    if recorded is None:  # manifests written before the flags were recorded: the runs' configs say it
        found = {c.get("dataset") for e in spec["runs"] if (c := _read(root / e["run"] / "config.json"))}
        grid = {p.get("dataset") for _, _, p in EXPERIMENTS[spec["experiment"]]["grid"]}
        found -= grid
        if len(found) > 1:
            raise UserError(f"{root}: the runs of {spec['experiment']} used several datasets; pass --dataset")
        recorded = next(iter(found), None)
    return recorded


def migrated(spec: dict[str, Any]) -> bool:
    """Whether a manifest was written by rbwa >= 0.2 (or migrated): its data named by content, no machine key."""
    recorded = spec.get("overrides")
    if recorded is None or set(recorded) & set(MACHINE_KEYS):
        return False
    data = str(recorded.get("dataset", ""))
    return not data.startswith("folder:") or "(" in data


def migrate(root: str | Path, dataset: str | None = None) -> list[tuple[str, str]]:
    """Rename the runs under ``root``; returns the (old, new) names of the runs renamed."""
    root = Path(root)
    manifests = [(p, s) for p in sorted(root.glob("*.json")) if isinstance(s := _read(p), dict) and "experiment" in s]
    if not manifests:
        raise UserError(f"{root} holds no experiment manifests (*.json written by `rbwa reproduce`)")
    plans = []  # everything is checked before anything is renamed
    for path, spec in manifests:
        if migrated(spec) and dataset is None:
            continue
        data = _dataset(root, spec, dataset)
        overrides = {k: v for k, v in spec.get("overrides", {}).items() if k not in MACHINE_KEYS}
        if data is not None:
            overrides["dataset"] = data
        seeds = max(e["seed"] for e in spec["runs"]) + 1
        runs = {(r.setting, r.label, r.seed): r
                for r in expand(spec["experiment"], spec["preset"], seeds, root, overrides)}
        moves = []
        for entry in spec["runs"]:
            run = runs.get((entry["setting"], entry["label"], entry["seed"]))
            if run is None:
                raise UserError(f"{path}: no run {entry['label']} seed {entry['seed']} in today's "
                                f"{spec['experiment']} grid; this manifest cannot be migrated")
            old, new = root / entry["run"], Path(run.config.out)
            saved = _read(old / "config.json") if old.is_dir() else None
            want = identify(resolve(run.config))
            if saved is not None:
                differing = differing_keys(saved, want, ignore=("dataset",))
                if differing:
                    raise UserError(f"{old} was run with another config than its manifest says "
                                    f"({', '.join(differing)}); move it away and rerun `rbwa migrate`")
            moves.append((old, new, want))
        plans.append((path, spec, overrides, list(runs.values()), moves))
    renamed = []
    for path, spec, overrides, runs, moves in plans:
        for old, new, want in moves:
            if old != new and old.is_dir():
                if new.exists():
                    raise UserError(f"cannot rename {old} to {new}: the target exists; move one of them away")
                old.rename(new)
                renamed.append((old.name, new.name))
            if (new / "config.json").exists():
                atomic_write_json(new / "config.json", want)
        atomic_write_json(path, manifest(spec["experiment"], spec["preset"], runs, root, overrides))
    return renamed


def migrate_command(root: str | Path, dataset: str | None = None) -> None:
    """``rbwa migrate``: :func:`migrate`, and a line per run renamed."""
    renamed = migrate(root, dataset)
    for old, new in renamed:
        print(f"{old} -> {new}")
    print(f"renamed {len(renamed)} run(s) in {root}; configs and manifests now carry no machine path")
