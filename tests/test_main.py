"""The entry point: how torch's threads wait is settled before torch loads, and only when other processes are busy."""

import subprocess
import sys

import pytest

from rbwa.__main__ import busy_cores, settle_threads, sign_in


def test_busy_cores_sums_each_cores_busy_share():
    # core 0: 100 ticks, 25 idle + 25 waiting for i/o -> half busy; core 1: 40 ticks, none idle -> busy;
    # guest ticks (the 9th column on) are inside user already and are not counted twice
    before = [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [10, 0, 0, 5, 0, 0, 0, 0, 0, 0]]
    after = [[40, 5, 5, 25, 25, 0, 0, 0, 7, 0], [40, 0, 10, 5, 0, 0, 0, 0, 30, 0]]
    assert busy_cores(before, after) == pytest.approx(0.5 + 1.0)
    assert busy_cores(after, after) == 0.0  # no ticks passed: nothing known busy


def test_threads_sleep_only_for_computing_commands_on_busy_cores():
    env = {}
    note = settle_threads(["train", "--epochs", "1"], env, measure=lambda: 1.3)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and "1.3 cores busy" in note
    for argv, busy in ((["train"], 0.4), (["train"], None), (["report", "x"], 2.0), ([], 2.0)):
        env = {}
        assert settle_threads(argv, env, measure=lambda b=busy: b) is None and env == {}


@pytest.mark.parametrize("chosen", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"}])
def test_the_users_choice_wins_and_is_not_even_measured(chosen):
    env = dict(chosen)
    assert settle_threads(["demo"], env, measure=lambda: pytest.fail("measured")) is None and env == chosen


def test_the_entry_point_and_the_package_load_no_torch_until_a_name_is_used():
    code = ("import sys, rbwa, rbwa.__main__; assert 'torch' not in sys.modules, 'torch loaded'; "
            "from rbwa import RBWA, rbwa_e; import torch; assert issubclass(RBWA, torch.optim.Optimizer); "
            "assert callable(rbwa_e) and rbwa.__version__")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import rbwa

        rbwa.nope  # noqa: B018


def test_rbwa_commands_see_each_other_and_forget_those_that_ended(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / str(ended.pid)).touch()  # signed in, then killed before it could sign out
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            (tmp_path / str(alive.pid)).touch()
            others = sign_in(tmp_path, 10**9)  # no process has that number: it is only a name here
            assert (tmp_path / str(10**9)).exists()
            assert others() == [alive.pid] and not (tmp_path / str(ended.pid)).exists()
        finally:
            alive.kill()
    alive.wait()
    assert others() == []


def test_threads_sleep_beside_another_rbwa_command_even_on_idle_cores():
    env = {}
    note = settle_threads(["demo"], env, measure=lambda: 0.0, peers=lambda: [123])
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"} and note.startswith("note: 1 other rbwa command running,")


def test_two_demos_started_together_both_sleep(tmp_path):
    """Two processes started at once, each signed in before it measures (the measure here is a 2-second sleep on idle
    cores), each see the other: both choose sleeping threads, and both sign out at exit."""
    code = ("import os, sys, time, rbwa.__main__ as m; from pathlib import Path; "
            "others = m.sign_in(Path(sys.argv[1]), os.getpid()); "
            "chose = m.settle_threads(['train'], {}, measure=lambda: time.sleep(2) or 0.0, peers=others); "
            "print(chose is not None, flush=True); "
            "time.sleep(3)")  # a run goes on after it has chosen
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert outs == ["True\n", "True\n"] and list(tmp_path.iterdir()) == []  # both signed out at exit
