"""The entry point: how torch's threads wait is settled before torch loads, and only when the cores are shared."""

import os
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


def settle(argv, busy, peers=(), cores=2, **env):
    env = {"OMP_NUM_THREADS": "2", **env}
    why = settle_threads(argv, env, measure=lambda: busy, peers=lambda: list(peers), cores=cores)
    return why, env.get("OMP_WAIT_POLICY")


def test_threads_sleep_only_where_the_others_leave_too_few_cores_for_them():
    assert settle(["train", "--epochs", "1"], 1.3) == ("other processes keep 1.3 of 2 cores busy", "PASSIVE")
    assert settle(["train"], 0.4) == (None, None) and settle(["train"], None) == (None, None)
    # 8 threads on 64 cores: crowded only once fewer than 7.5 are free
    assert settle(["train"], 56.0, cores=64, OMP_NUM_THREADS="8") == (None, None)
    assert settle(["train"], 57.0, cores=64, OMP_NUM_THREADS="8")[1] == "PASSIVE"


@pytest.mark.parametrize("argv", [["report", "x"], [], ["train", "--help"], ["demo", "-h"]])
def test_commands_that_do_not_compute_are_not_even_measured(argv):
    assert settle_threads(argv, {"OMP_NUM_THREADS": "2"}, measure=lambda: pytest.fail("measured")) is None


@pytest.mark.parametrize("chosen", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "1000"},
                                    {"OMP_NUM_THREADS": "1"}])  # one thread: no team, nothing waits
def test_the_users_choice_wins_and_is_not_even_measured(chosen):
    env = {"OMP_NUM_THREADS": "2", **chosen}
    before = dict(env)
    assert settle_threads(["demo"], env, measure=lambda: pytest.fail("measured")) is None and env == before


def test_threads_sleep_beside_another_rbwa_command_even_on_idle_cores():
    assert settle(["demo"], 0.0, peers=[123]) == ("1 other rbwa command running", "PASSIVE")


def test_the_entry_point_and_the_package_load_no_torch_until_a_name_is_used():
    code = ("import sys, rbwa, rbwa.__main__; assert 'torch' not in sys.modules, 'torch loaded'; "
            "from rbwa import RBWA, rbwa_e; import torch; assert issubclass(RBWA, torch.optim.Optimizer); "
            "assert callable(rbwa_e) and rbwa.__version__")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    # a dotted path through the package imports the submodule on the way, as it did before the package was lazy
    subprocess.run([sys.executable, "-c", "import rbwa; rbwa.averaging.named.NamedAverages; rbwa.averaging.fold_"],
                   check=True, timeout=120)
    import rbwa

    assert {"RBWA", "rbwa_e", "__version__", "__file__", "__path__"} <= set(dir(rbwa)) and "_importlib" not in dir(rbwa)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rbwa.nope  # noqa: B018


SIGN_IN = ("import os, sys, time, rbwa.__main__ as m; from pathlib import Path; "
           "others = m.sign_in(Path(sys.argv[1]), os.getpid()); ")


def test_a_sign_in_lasts_as_long_as_its_process_however_it_ends(tmp_path):
    folder = tmp_path / "in"
    # one that ended without its exit handlers (os._exit, as torchrun's workers end): its file stays, unlocked
    subprocess.run([sys.executable, "-c", SIGN_IN + "os._exit(0)", str(folder)], check=True, timeout=120)
    (ended,) = [f.name for f in folder.iterdir()]
    with subprocess.Popen([sys.executable, "-c", SIGN_IN + "print('in', flush=True); time.sleep(60)", str(folder)],
                          stdout=subprocess.PIPE, text=True) as alive:
        try:
            assert alive.stdout.readline() == "in\n"
            others = sign_in(folder, 10**9)  # a number no process has: a name here
            assert others() == [alive.pid] and not (folder / ended).exists()  # the ended one's file is removed
        finally:
            alive.kill()
    alive.wait()
    assert others() == [] and sorted(f.name for f in folder.iterdir()) == [str(10**9)]


def test_a_sign_in_folder_that_is_a_link_is_refused_and_an_open_one_of_ours_made_private(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="not a private directory"):
        sign_in(tmp_path / "link", 1)
    assert list((tmp_path / "elsewhere").iterdir()) == []
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)  # ours, made under another umask (or by an older rbwa): made private
    sign_in(tmp_path / "open", 10**9)
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o700 and (tmp_path / "open" / str(10**9)).exists()


def test_two_commands_started_together_both_sleep(tmp_path):
    """Two processes started at once, each signed in before it measures (the measure here is a 2-second sleep on idle
    cores), each see the other: both choose sleeping threads, and both sign out at exit."""
    code = SIGN_IN + ("chose = m.settle_threads(['train'], {'OMP_NUM_THREADS': '2'}, measure=lambda: time.sleep(2) "
                      "or 0.0, peers=others, cores=2); print(chose, flush=True); time.sleep(3)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "in")], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert outs == ["1 other rbwa command running\n"] * 2 and list((tmp_path / "in").iterdir()) == []
