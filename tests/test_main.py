"""The entry point: how torch's threads wait is settled before torch loads, and only when other processes are busy."""

import subprocess
import sys

import pytest

from rbwa.__main__ import busy_cores, settle_threads


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
