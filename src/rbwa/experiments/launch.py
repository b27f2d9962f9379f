"""Where the runs of a sweep train: here, one after another (``local``); as Ray tasks (``ray``); or as a Slurm
job array through submitit (``slurm``).

A launcher takes the runs ``grids.expand`` made and decides only where each ``train(config)`` runs.
Every launcher writes the same ``OUT/runs/<name>`` directories, skips finished runs and resumes
interrupted ones, so ``rbwa report`` and ``rbwa status`` read them alike. A run trains under its lock
(``rundir.run_lock``), so two launchers pointed at one OUT never train the same run twice at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rbwa.errors import UserError
from rbwa.experiments.grids import GridRun
from rbwa.training.rundir import run_lock

LAUNCHERS = ("local", "ray", "slurm")
RAY_RETRIES = 3  # a task whose worker dies is started again, and resumes from its run's checkpoint


EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # launcher: (module, pip extra)


def require(launcher: str) -> None:
    """Refuse, before any work, a launcher whose optional package is not installed."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
    if launcher in EXTRAS:
        import importlib

        module, extra = EXTRAS[launcher]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"the {launcher} launcher needs {module}: pip install 'rbwa[{extra}]'") from e


def run_one(config: dict[str, Any], threads: int | None = None, verbose: bool = False) -> str:
    """Train one run to the end (resuming it) in this process; returns its status. What every launcher calls.

    ``verbose`` prints each epoch's line (the local launcher); workers elsewhere stay quiet.
    """
    import torch

    from rbwa.training.config import make_config
    from rbwa.training.loop import Diverged, train

    if threads:
        torch.set_num_threads(threads)
    cfg = make_config(**config)
    with run_lock(Path(cfg.out)) as mine:
        if not mine:
            return "training in another process"
        try:
            train(cfg, resume=True, progress=False, log=None if verbose else (lambda line: None))
        except Diverged:
            return "diverged"
    return "finished"


def threads_for(cpus_per_run: float | None) -> int | None:
    """torch threads for a run given its CPUs (at least 1); None leaves torch's default."""
    return None if cpus_per_run is None else max(1, int(cpus_per_run))


def blind_nodes(path: Path) -> tuple[int, int]:
    """(nodes that do not see ``path``, live nodes) of the connected Ray cluster: one task on every live node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    probe = ray.remote(num_cpus=0)(os.path.exists)
    seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                    .remote(str(path)) for node in nodes])
    return sum(not s for s in seen), len(nodes)


def check_visible(out: Path) -> None:
    """Refuse, in one line, a Ray cluster with a node that does not see ``out``: a file written here is looked for
    on every node."""
    import uuid

    marker = out / f".rbwa-visible-{uuid.uuid4().hex}"
    marker.write_text("written by the driver of a sweep; removed once every node has looked for it\n")
    try:
        blind, nodes = blind_nodes(marker)
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise UserError(f"{blind} of the {nodes} nodes of the Ray cluster cannot see --out {out}; a multi-node "
                        "cluster needs --out on a filesystem that every node mounts at the same path")


def launch_ray(runs: list[GridRun], out: Path, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
               address: str | None = None, say: Callable[[str], None] = print) -> dict[str, str]:
    """Every run as a Ray task; without ``address`` a local Ray is started with this machine's cores.

    ``gpus_per_run`` may be a fraction: 0.25 packs four runs on one GPU. On a cluster (``address``), every node
    must see ``out`` (the sweep's root, where the runs are written), which is checked first. Returns run name ->
    status.
    """
    try:
        import ray
    except ImportError as e:
        raise UserError("the ray launcher needs Ray: pip install 'rbwa[ray]'") from e
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    try:
        if address:
            check_visible(out)
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=RAY_RETRIES)(run_one)
        pending = {task.remote(r.config.to_dict(), threads_for(cpus_per_run)): r for r in runs}
        statuses = {}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                statuses[run.name] = ray.get(done[0])
            except ray.exceptions.RayError as e:  # retries spent: the run stays interrupted, resumable
                statuses[run.name] = f"failed ({type(e).__name__}); rerun the command to resume it"
            say(f"{run.experiment} {run.setting} {run.label} seed {run.seed}: {statuses[run.name]}")
        return statuses
    finally:
        if started:
            ray.shutdown()


def slurm_parameters(cpus_per_run: float | None, gpus_per_run: float, partition: str | None, time_min: int,
                     extra: dict[str, str] | None = None, parallel: int | None = None) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job of the array per run."""
    if gpus_per_run != int(gpus_per_run):
        raise UserError(f"--gpus-per-run must be a whole number on Slurm, got {gpus_per_run}")
    params: dict[str, Any] = {"name": "rbwa", "timeout_min": time_min, "cpus_per_task": threads_for(cpus_per_run) or 1,
                              "gpus_per_node": int(gpus_per_run), "nodes": 1, "tasks_per_node": 1}
    if partition:
        params["slurm_partition"] = partition
    if extra:
        params["slurm_additional_parameters"] = dict(extra)
    if parallel:
        params["slurm_array_parallelism"] = parallel
    return params


def launch_slurm(runs: list[GridRun], folder: Path, params: dict[str, Any], cluster: str | None = "slurm",
                 say: Callable[[str], None] = print) -> list[Any]:
    """Submit the runs as one submitit job array and return its jobs at once (``cluster="local"``: this machine)."""
    try:
        import submitit
    except ImportError as e:
        raise UserError("the slurm launcher needs submitit: pip install 'rbwa[slurm]'") from e
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # no srun here
        raise UserError(f"cannot submit to Slurm from this machine ({e})") from e
    executor.update_parameters(**params)
    threads = [params.get("cpus_per_task")] * len(runs)
    jobs = executor.map_array(run_one, [r.config.to_dict() for r in runs], threads)
    ids = ", ".join(str(j.job_id) for j in jobs)
    say(f"submitted {len(jobs)} run(s) as job(s) {ids}; logs in {folder}")
    say("watch them with `squeue --me` (or `sacct -j JOBID`) and `rbwa status OUT`; rerun this command to "
        "resubmit what did not finish")
    return jobs
