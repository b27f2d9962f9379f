"""The resumable runner of a sweep: ``OUT/<experiment>.json`` lists the runs of each experiment (for
``rbwa report`` and ``rbwa status``); runs not finished yet are trained where the launcher says, finished ones
skipped, interrupted ones resumed.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.experiments.grids import EXPERIMENTS, GridRun, expand
from rbwa.experiments.launch import launch_ray, launch_slurm, require, run_one, slurm_parameters, threads_for
from rbwa.io import atomic_write_json
from rbwa.training import config
from rbwa.training.config import MACHINE_KEYS, identify
from rbwa.training.rundir import STATUSES, run_status


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


def reproduce_command(experiment: str, preset: str = "cpu", seeds: int = 3, out: str | Path = "runs",
                      overrides: dict[str, Any] | None = None, dry_run: bool = False, only: list[str] | None = None,
                      launcher: str = "local", cpus_per_run: float | None = None, gpus_per_run: float | None = None,
                      ray_address: str | None = None, slurm_partition: str | None = None, slurm_time: int = 240,
                      slurm_parallel: int | None = None, slurm_extra: list[str] | None = None) -> list[GridRun]:
    """``rbwa reproduce``: the launcher's resources checked (and, for Slurm, its job parameters made from the
    ``slurm_*`` flags, ``slurm_extra`` as KEY=VALUE sbatch options), then :func:`reproduce`."""
    require(launcher)  # a missing optional package, before anything else
    if cpus_per_run is not None and not cpus_per_run > 0:
        raise UserError(f"--cpus-per-run must be > 0, got {cpus_per_run}")
    if gpus_per_run is not None and gpus_per_run < 0:
        raise UserError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
    slurm = None
    if launcher == "slurm":
        extra = {}
        for item in slurm_extra or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UserError(f"--slurm-extra takes KEY=VALUE (an sbatch option without its dashes), got {item!r}")
            extra[key] = value
        slurm = {"params": slurm_parameters(cpus_per_run, gpus_per_run or 0, slurm_partition, slurm_time, extra,
                                            slurm_parallel)}
    return reproduce(experiment, preset=preset, seeds=seeds, out=out, overrides=overrides, dry_run=dry_run,
                     launcher=launcher, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run or 0.0,
                     ray_address=ray_address, slurm=slurm, only=only)


def print_status(out: str | Path) -> None:
    """``rbwa status``: a line per experiment with its runs by status, and a bar of the runs done."""
    counts = status(out)
    total = {s: sum(c[s] for c in counts.values()) for s in STATUSES}
    width = max(len(e) for e in counts)
    for experiment, c in counts.items():
        print(f"{experiment:<{width}}  " + ", ".join(f"{c[s]} {s}" for s in STATUSES))
    n, done = sum(total.values()), total["finished"] + total["diverged"]
    bar = "#" * round(30 * done / n) + "." * (30 - round(30 * done / n))
    print(f"[{bar}] {done}/{n} runs done ({total['running']} running, {total['interrupted']} interrupted, "
          f"{total['not started']} not started; a run shared by experiments counts in each)")
