import json
import subprocess
import sys

import pytest

from rbwa.cli import main

SMALL = ["--dataset", "digits", "--width", "0.0625", "--epochs", "1", "--start-epoch", "0", "--train-subset", "100",
         "--test-subset", "50", "--quiet"]


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_yaml_config_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("methd: rbwa\n")
    code, _, err = run_cli(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert code == 2 and err.strip() == ("error: unknown config key(s): methd; valid keys are the `rbwa train` flags")
    cfg.write_text("epochs: many\n")
    code, _, err = run_cli(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert code == 2 and "'epochs' must be of type int" in err


def test_train_from_yaml_with_flags_winning(tmp_path, capsys):
    pytest.importorskip("sklearn")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: rbwa\nlr: 0.2\nepochs: 5\n")
    code, out, _ = run_cli(capsys, ["train", "--config", str(cfg), *SMALL, "--out", str(tmp_path / "run")])
    assert code == 0 and "rbwa: final test accuracy" in out
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert (saved["method"], saved["lr"], saved["epochs"]) == ("rbwa", 0.2, 1)
    code, _, err = run_cli(capsys, ["train", "--config", str(cfg), *SMALL, "--out", str(tmp_path / "run")])
    assert code == 2 and "already holds a run; pass --resume" in err
    code, _, _ = run_cli(capsys, ["train", "--config", str(cfg), *SMALL, "--out", str(tmp_path / "run"), "--resume"])
    assert code == 0


def test_diverged_run_exits_3(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code, _, err = run_cli(capsys, ["train", *SMALL, "--lr", "1e12", "--momentum", "0", "--weight-decay", "0",
                                    "--out", str(tmp_path / "run")])
    assert code == 3 and err.strip().splitlines()[-1].startswith("error: training loss became")
    assert "start a new run in another --out with a lower --lr" in err
    # resuming it is refused the same way, in one line with status 3, not with a KeyError
    code, _, err = run_cli(capsys, ["train", *SMALL, "--lr", "1e12", "--momentum", "0", "--weight-decay", "0",
                                    "--out", str(tmp_path / "run"), "--resume"])
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "Traceback" not in err
    assert lines[0] == (f"error: {tmp_path / 'run'} diverged in epoch 1 and cannot be resumed; start a new run in "
                        "another --out (with a lower --lr)")


def test_train_refuses_a_run_that_another_process_trains(tmp_path, capsys):
    """A sweep's worker holds the run's lock while it trains: `rbwa train --resume` of the same directory waits
    for nobody and trains nothing; once the lock is free, a --resume of a directory with no run is refused and a
    plain `rbwa train` trains it."""
    import os

    from rbwa.training.rundir import run_lock

    pytest.importorskip("sklearn")
    run = tmp_path / "run"
    argv = ["train", *SMALL, "--out", str(run)]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from rbwa.training.rundir import run_lock\n"
        f"with run_lock(pathlib.Path({str(run)!r})):\n    print('held', flush=True); sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = run_cli(capsys, [*argv, "--resume"])
        assert code == 2 and err == (f"error: {run} is being trained by another process (pid {holder.pid}); wait "
                                     "for it to finish, or stop it and rerun with --resume\n")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing trained, nothing removed
    finally:
        holder.stdin.close()
        holder.wait()
    code, _, err = run_cli(capsys, [*argv, "--resume"])  # the lock is free, and the directory holds no run
    assert code == 2 and "holds no run to continue" in err
    code, _, _ = run_cli(capsys, argv)
    assert code == 0 and (run / "summary.json").exists()
    with run_lock(run) as mine:  # released at the end
        assert mine and (run / ".lock").read_text() == f"{os.getpid()}\n"


def test_module_entry_point_reports_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rbwa", "train", "--epochs", "-1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == "error: epochs must be > 0, got -1\n"


def test_demo_writes_table_and_plot(tmp_path, capsys):
    pytest.importorskip("sklearn")
    code, out, _ = run_cli(capsys, ["demo", "--out", str(tmp_path / "a"), "--epochs", "1"])
    assert code == 0
    assert "| method | final test loss | final test acc (%) | final train loss |" in out
    for method in ("sgd", "rbwa", "sgd (harmonic LR, = rbwa)", "rbwa-e", "swa"):
        assert f"| {method} |" in out
    assert "\nLesson: RBWA is SGD on a harmonic learning-rate decay" in out
    assert (tmp_path / "a/demo.png").stat().st_size > 10_000 and (tmp_path / "a/demo.md").exists()
    assert (tmp_path / "a/demo.md").read_text() in out  # the table printed is the one written


def test_reproduce_then_report(tmp_path, capsys):
    pytest.importorskip("sklearn")
    sweep = tmp_path / "sweep"
    code, out, _ = run_cli(capsys, ["reproduce", "controls", "--preset", "smoke", "--seeds", "2", "--dataset", "digits",
                                    "--train-subset", "100", "--test-subset", "50", "--out", str(sweep)])
    assert code == 0 and out.count(": training") == 14  # 7 lines x 2 seeds
    code, out, _ = run_cli(capsys, ["report", str(sweep)])
    report = (sweep / "report.md").read_text()
    assert code == 0 and "</a>rbwa = sgd on the harmonic LR" in report and "controls-resnet18.png" in report
    assert "</a>rbwa-e = sgd on rbwa-e's LR" in report and "| Does rbwa beat sgd (cosine LR)? |" in report
    assert (sweep / "results.csv").exists()


@pytest.mark.parametrize("command", ["train", "reproduce", "report", "demo", "migrate", "merge", "posthoc", "sample"])
def test_every_flag_says_what_it_does(command):
    import argparse

    from rbwa.cli import parser
    from rbwa.training.config import CHOICES

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        words = (action.help or "").split(" (default")[0]
        assert len(words.split()) >= 3, (command, action.dest, action.help)  # more than "default: X"
        if action.dest in CHOICES:  # the allowed values are in the usage line
            assert action.metavar == "{" + ",".join(CHOICES[action.dest]) + "}"


@pytest.mark.parametrize(("flags", "message"), [
    (["--cpus-per-run", "0"], "error: --cpus-per-run must be > 0, got 0.0"),
    (["--gpus-per-run", "-1"], "error: --gpus-per-run must be >= 0, got -1.0"),
    (["--launcher", "slurm", "--slurm-extra", "qos"], "error: --slurm-extra takes KEY=VALUE (an sbatch option "
                                                      "without its dashes), got 'qos'"),
    (["--write-back", "-1"], "error: write back must be >= 0 (0: never), got -1"),
])
def test_bad_launcher_flags_are_one_line(tmp_path, capsys, flags, message):
    pytest.importorskip("submitit")
    code = main(["reproduce", "fig3", "--preset", "smoke", "--dataset", "digits", "--out", str(tmp_path / "o"),
                 *flags])
    assert code == 2 and capsys.readouterr().err == message + "\n" and not (tmp_path / "o").exists()


def test_resume_of_a_directory_with_no_run_is_refused_in_one_line(tmp_path, capsys):
    """A mistyped --out with --resume would otherwise train a new run from scratch."""
    missing = tmp_path / "typo"
    code, out, err = run_cli(capsys, ["train", *SMALL, "--out", str(missing), "--resume"])
    assert code == 2 and out == "" and err.strip() == (
        f"error: --resume: {missing} holds no run to continue (no config.json); check --out, or drop --resume to "
        "start a new run there")
    assert not missing.exists()


def test_help_says_each_default_once_and_that_presets_set_the_sweep_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "lr-gamma (default: the start epoch) --lr-gamma" in text and "(default: None)" not in text.split(
        "--lr-milestones")[2][:80]
    assert main(["reproduce", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS number of epochs to train (default: the preset's)" in text
    assert "(default: the preset's)" in text.split("--width WIDTH")[2][:120] and "(default: 1.0)" not in text


def test_train_takes_a_preset_and_names_a_language_models_measures(tmp_path, capsys):
    """Issue 41: `rbwa train` had no --preset (the cpu-lm configuration took ten flags); a GPT run printed "final
    test accuracy" and an AdamW run was labelled "sgd"."""
    text = tmp_path / "text.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 40)
    code, out, err = run_cli(capsys, ["train", "--preset", "cpu-lm", "--dataset", f"text:{text}", "--model", "gpt",
                                      "--optimizer", "adamw", "--epochs", "1", "--layers", "1", "--embedding", "16",
                                      "--heads", "2", "--context", "16", "--out", str(tmp_path / "lm")])
    saved = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert code == 0 and (saved["lr"], saved["batch_size"], saved["weight_decay"], saved["warmup_steps"]) == (
        1e-3, 12, 0.1, 100)  # the preset's; the flags win where given
    assert saved["layers"] == 1 and saved["epochs"] == 1
    assert out.startswith("adamw: final validation loss ") and "bits per character" in out
    assert "adamw epoch 1/1: train loss" in err and "validation loss" in err and "test acc" not in err
    code, _, err = run_cli(capsys, ["train", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert code == 2 and "unknown preset 'huge'" in err
