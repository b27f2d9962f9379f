import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

from rbwa.errors import UserError
from rbwa.training.rundir import LOCK, claim, is_locked, run_lock, run_status

SRC = Path(__file__).resolve().parents[2] / "src" / "rbwa"


def _hold(run_dir: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the run's lock, says so, and lets it go after ``seconds`` (a status probe
    caught at the wrong instant, slowed down)."""
    code = (f"import fcntl, time; f = open({str(run_dir / LOCK)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            f"print('held', flush=True); time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_probe_holding_the_lock_for_an_instant_does_not_make_a_worker_skip_its_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    probe = _hold(run, 0.3)
    assert is_locked(run) and run_status(run) == "running"
    with run_lock(run) as mine:  # waits out the probe instead of believing another process trains the run
        assert mine
    probe.wait()


def test_a_lock_held_for_longer_than_the_patience_is_another_process_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold(run, 30)
    try:
        with run_lock(run, patience=0.2) as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(run) and run_status(run) == "not started"  # the lock died with its process


def test_claim_removes_the_directories_it_created_when_the_run_stops_on_bad_input(tmp_path):
    run = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(UserError, match="bad"), claim(run):
        assert (run / LOCK).exists()
        raise UserError("bad input")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(UserError), claim(tmp_path / "kept" / "run"):
        (tmp_path / "kept" / "run" / "config.json").write_text("{}")  # something written: never removed
        raise UserError("bad input")
    assert (tmp_path / "kept" / "run" / "config.json").exists()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rbwa"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rbwa")}
    return found


def test_the_modules_import_each_other_without_a_cycle():
    """Every import between rbwa's modules, at the top of a module or inside a function, points one way; the
    run-directory primitives sit below both the sweep and its launchers."""
    graph = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("rbwa", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        graph[name] = _imports(path)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    rundir, launch, runner = "rbwa.training.rundir", "rbwa.experiments.launch", "rbwa.experiments.runner"
    assert order.index(rundir) < order.index(launch) < order.index(runner)
    assert runner not in graph[launch] and launch not in graph[rundir]
