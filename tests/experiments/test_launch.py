"""Launchers for real: a local Ray started with 2 CPUs, submitit's local executor, and `rbwa status`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rbwa.cli import main
from rbwa.errors import UserError
from rbwa.experiments.grids import expand
from rbwa.experiments.launch import launch_slurm, slurm_parameters
from rbwa.experiments.runner import reproduce, status
from rbwa.io import read_jsonl
from rbwa.training.rundir import run_lock

pytest.importorskip("sklearn")
SMOKE = {"dataset": "digits", "train_subset": 100, "test_subset": 50}


def _metrics(out: Path, runs) -> dict[str, list[dict]]:
    """Every run's metrics, without the wall time (which cannot repeat)."""
    return {r.name: [{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(out / "runs" / r.name /
                                                                                         "metrics.jsonl")]
            for r in runs}


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """The reference: the local launcher, 1 torch thread per run (as every Ray task below has)."""
    out = tmp_path_factory.mktemp("local")
    runs = reproduce("fig3", "smoke", 1, out, SMOKE, cpus_per_run=1)
    return out, runs


def test_status_counts_a_hand_built_sweep(tmp_path, capsys):
    runs = expand("fig3", "smoke", 2, tmp_path, SMOKE)  # 8 runs
    (tmp_path / "fig3.json").write_text(json.dumps({"experiment": "fig3", "runs": [
        {"run": f"runs/{r.name}", "setting": r.setting, "label": r.label, "seed": r.seed} for r in runs]}))
    dirs = [tmp_path / "runs" / r.name for r in runs]
    for d in dirs[:4]:
        d.mkdir(parents=True)
    (dirs[0] / "summary.json").write_text('{"status": "finished"}')
    (dirs[1] / "summary.json").write_text('{"status": "diverged"}')
    (dirs[2] / "checkpoint.pt").write_bytes(b"x")  # interrupted: a checkpoint, no summary, no live lock
    (dirs[3] / "checkpoint.pt").write_bytes(b"x")
    with run_lock(dirs[3]):  # held by a live process: running
        counts = status(tmp_path)["fig3"]
        assert main(["status", str(tmp_path)]) == 0
    assert counts == {"finished": 1, "diverged": 1, "running": 1, "interrupted": 1, "not started": 4}
    out = capsys.readouterr().out
    assert "fig3  1 finished, 1 diverged, 1 running, 1 interrupted, 4 not started" in out
    assert "] 2/8 runs done" in out and "[" + "#" * 8 + "." * 22 + "]" in out
    assert status(tmp_path)["fig3"]["interrupted"] == 2  # the lock died with its holder
    with pytest.raises(UserError, match="holds no experiment manifests"):
        status(tmp_path / "runs")


def test_ray_sweep_two_at_a_time_gives_the_local_metrics(tmp_path, local_sweep, capsys):
    pytest.importorskip("ray")
    reference, runs = local_sweep
    reproduce("fig3", "smoke", 1, tmp_path, SMOKE, launcher="ray", cpus_per_run=1)
    out = capsys.readouterr().out
    assert "4 run(s) to train on Ray, 1 CPU(s) and 0.0 GPU(s) each" in out and out.count(": finished") == 4
    assert _metrics(tmp_path, runs) == _metrics(reference, runs)
    assert status(tmp_path)["fig3"]["finished"] == 4
    reproduce("fig3", "smoke", 1, tmp_path, SMOKE, launcher="ray", cpus_per_run=1)  # nothing left to do
    assert capsys.readouterr().out.count("finished, skipped") == 4


def test_a_killed_ray_worker_is_retried_and_the_rerun_completes_identically(tmp_path):
    pytest.importorskip("ray")
    flags = ["--dataset", "digits", "--train-subset", "300", "--test-subset", "50", "--epochs", "8",
             "--start-epoch", "2", "--preset", "smoke", "--seeds", "1"]
    cmd = [sys.executable, "-m", "rbwa", "reproduce", "fig3", *flags, "--cpus-per-run", "1"]
    sweep = subprocess.Popen([*cmd, "--out", str(tmp_path / "ray"), "--launcher", "ray"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline:  # a run with a checkpoint, mid-way
        for run in (tmp_path / "ray" / "runs").glob("*"):
            metrics = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
            if 2 <= len(metrics) <= 5 and not (run / "summary.json").exists() and (run / ".lock").exists():
                pid = (run / ".lock").read_text().strip()
                if pid:
                    victim = (run, int(pid))
                    break
        time.sleep(0.05)
    assert victim is not None, "no run was caught mid-way"
    os.kill(victim[1], signal.SIGKILL)
    sweep.communicate(timeout=600)
    rerun = subprocess.run([*cmd, "--out", str(tmp_path / "ray"), "--launcher", "ray"], capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.count("finished, skipped") == 4  # the retry had finished it already
    local = subprocess.run([*cmd, "--out", str(tmp_path / "local")], capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]
    runs = expand("fig3", "smoke", 1, tmp_path / "local", {**SMOKE, "train_subset": 300, "epochs": 8,
                                                           "start_epoch": 2})
    assert _metrics(tmp_path / "ray", runs) == _metrics(tmp_path / "local", runs)
    assert len(_metrics(tmp_path / "ray", runs)[victim[0].name]) == 9


def test_submitit_local_executor_runs_the_sweep_end_to_end(tmp_path, local_sweep, capsys):
    pytest.importorskip("submitit")
    reference, runs = local_sweep
    todo = expand("fig3", "smoke", 1, tmp_path, SMOKE)
    jobs = launch_slurm(todo, tmp_path / "slurm", slurm_parameters(1, 0, None, 10), cluster="local")
    assert [j.result() for j in jobs] == ["finished"] * 4
    assert "submitted 4 run(s) as job(s)" in capsys.readouterr().out
    assert _metrics(tmp_path, runs) == _metrics(reference, runs)


def test_slurm_parameters_as_sbatch_would_get_them(tmp_path):
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    params = slurm_parameters(4, 1, "gpu", 90, {"qos": "high", "account": "lab"}, parallel=8)
    assert params == {"name": "rbwa", "timeout_min": 90, "cpus_per_task": 4, "gpus_per_node": 1, "nodes": 1,
                      "tasks_per_node": 1, "slurm_partition": "gpu", "slurm_array_parallelism": 8,
                      "slurm_additional_parameters": {"qos": "high", "account": "lab"}}
    # what submitit's Slurm executor makes of them: its own names, then the sbatch header
    names = SlurmExecutor._equivalence_dict()
    slurm = {names.get(k, k): v for k, v in params.items() if not k.startswith("slurm_")}
    slurm.update({k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")})
    slurm["array_parallelism"] = slurm.pop("array_parallelism")
    header = _make_sbatch_string(command="python -m rbwa", folder=tmp_path, map_count=12, **slurm)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --qos=high", "#SBATCH --account=lab",
                 "#SBATCH --array=0-11%8", "#SBATCH --job-name=rbwa"):
        assert line in header, line
    assert submitit.__version__
    with pytest.raises(UserError, match="whole number on Slurm"):
        slurm_parameters(1, 0.25, None, 10)


@pytest.mark.parametrize(("launcher", "module", "extra"), [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_missing_extra_is_one_error_line(tmp_path, launcher, module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None; from rbwa.cli import main; "
            f"sys.exit(main(['reproduce', 'fig3', '--preset', 'smoke', '--dataset', 'digits', '--out', "
            f"{str(tmp_path / 'out')!r}, '--launcher', {launcher!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == (f"error: the {launcher} launcher needs {module}: "
                                                    f"pip install 'rbwa[{extra}]'\n")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray cluster started by `ray start --head` in a directory of its own, as on a real cluster."""
    pytest.importorskip("ray")
    import shutil

    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    head = tmp_path / "head"
    head.mkdir()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
                   cwd=head, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield head
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_a_sweep_on_a_ray_cluster_writes_where_the_driver_was_told(tmp_path, ray_cluster):
    driver = tmp_path / "driver"
    driver.mkdir()
    argv = [sys.executable, "-m", "rbwa", "reproduce", "fig3", "--preset", "smoke", "--seeds", "1", "--dataset",
            "digits", "--train-subset", "100", "--test-subset", "50", "--out", "rsweep", "--launcher", "ray",
            "--ray-address", "auto", "--cpus-per-run", "1"]
    done = subprocess.run(argv, cwd=driver, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(": finished") == 4
    assert status(driver / "rsweep")["fig3"]["finished"] == 4  # the runs are where the driver's --out points
    assert not (ray_cluster / "rsweep").exists()
    assert [p.name for p in (driver / "rsweep").iterdir() if p.name.startswith(".")] == []  # the probe cleaned up


def test_a_cluster_node_that_cannot_see_out_is_refused(tmp_path, ray_cluster, monkeypatch):
    import ray

    from rbwa.experiments import launch

    ray.init(address="auto", log_to_driver=False)
    try:
        assert launch.blind_nodes(tmp_path) == (0, 1) and launch.blind_nodes(tmp_path / "absent") == (1, 1)
        launch.check_visible(tmp_path)  # this machine's one node sees it; the marker is gone again
        assert list(tmp_path.iterdir()) == [ray_cluster]
    finally:
        ray.shutdown()
    monkeypatch.setattr(launch, "blind_nodes", lambda path: (1, 3))  # what a node without the filesystem answers
    with pytest.raises(UserError, match=f"1 of the 3 nodes of the Ray cluster cannot see --out {tmp_path}; a "
                                        "multi-node cluster needs --out on a filesystem that every node mounts"):
        launch.check_visible(tmp_path)
    assert list(tmp_path.iterdir()) == [ray_cluster]
