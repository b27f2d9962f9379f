"""Fault injection: SIGKILL at random moments, failing writes, too little memory."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rbwa import io as rbwa_io
from rbwa.errors import UserError
from rbwa.io import read_jsonl
from rbwa.training.config import make_config
from rbwa.training.loop import train
from rbwa.training.resources import estimate_bytes

pytest.importorskip("sklearn")
TRAIN = ["--dataset", "digits", "--width", "0.0625", "--batch-size", "32", "--train-subset", "300", "--test-subset",
         "100", "--augment", "standard", "--method", "rbwa", "--epochs", "12", "--start-epoch", "3", "--quiet"]
RUN_FILES = {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "train.log", ".lock"}


def assert_every_file_parses(run: Path) -> int:
    """Every run file is complete; returns the number of hidden temporaries a killed write left behind."""
    temporaries = 0
    for path in run.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temporaries += 1
            continue
        assert path.name in RUN_FILES, path
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            read_jsonl(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
    return temporaries


def _without_seconds(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


def _epochs_logged(run: Path) -> int:
    log = run / "train.log"
    return log.read_text().count("\n") if log.exists() else 0


def test_training_survives_many_sigkills_bit_identically(tmp_path):
    args = [*TRAIN, "--epochs", "20"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "rbwa", "train", *args, "--out", str(reference)], check=True,
                   capture_output=True)
    run = tmp_path / "killed"
    rng = random.Random(0)
    kills = temporaries = 0
    while True:
        logged = _epochs_logged(run)
        resume = ["--resume"] if (run / "config.json").exists() else []  # a run to continue, or none yet
        proc = subprocess.Popen([sys.executable, "-m", "rbwa", "train", *args, "--out", str(run), *resume],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kills >= 12:  # enough: let it finish
            assert proc.wait(timeout=600) == 0
            break
        # kill at a random moment: while starting up, or within the next epoch after 0 or 1 more epochs
        # are logged (checkpoint writes included), so that every start makes at most about two epochs
        wait_for = logged + rng.choice([0, 0, 1])
        while _epochs_logged(run) < wait_for and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is not None:
            assert proc.returncode == 0
            break
        proc.kill()
        proc.wait()
        kills += 1
        if run.exists():
            temporaries += assert_every_file_parses(run)
    assert kills >= 12
    assert assert_every_file_parses(run) == 0  # resuming removed what killed writes left
    killed, straight = read_jsonl(run / "metrics.jsonl"), read_jsonl(reference / "metrics.jsonl")
    assert _without_seconds(killed) == _without_seconds(straight)
    a = torch.load(run / "checkpoint.pt", weights_only=True)
    b = torch.load(reference / "checkpoint.pt", weights_only=True)
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    folds = [c["setup"]["optimizer"]["param_groups"][0]["rbwa"]["folds"] for c in (a, b)]
    assert folds[0] == folds[1] > 0


def test_sweep_killed_mid_way_ends_with_the_same_runs(tmp_path):
    args = ["reproduce", "fig3", "--preset", "smoke", "--seeds", "1", "--dataset", "digits", "--train-subset", "100",
            "--test-subset", "50"]
    subprocess.run([sys.executable, "-m", "rbwa", *args, "--out", str(tmp_path / "a")], check=True,
                   capture_output=True)
    rng = random.Random(1)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "rbwa", *args, "--out", str(tmp_path / "b")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.5, 6.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    subprocess.run([sys.executable, "-m", "rbwa", *args, "--out", str(tmp_path / "b")], check=True,
                   capture_output=True)
    runs_a = sorted(p.name for p in (tmp_path / "a/runs").iterdir())
    assert runs_a == sorted(p.name for p in (tmp_path / "b/runs").iterdir()) and len(runs_a) == 4
    for name in runs_a:
        assert _without_seconds(read_jsonl(tmp_path / "a/runs" / name / "metrics.jsonl")) == \
            _without_seconds(read_jsonl(tmp_path / "b/runs" / name / "metrics.jsonl"))


def _config(tmp_path, **kw):
    values = {"dataset": "digits", "width": 0.0625, "epochs": 3, "start_epoch": 1, "batch_size": 32,
              "train_subset": 200, "test_subset": 50, "method": "rbwa", "out": str(tmp_path / "run")}
    return make_config(**{**values, **kw})


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    writes = {"n": 0}
    real = rbwa_io.torch.save

    def save_until_disk_full(obj, f):
        writes["n"] += 1
        if writes["n"] == 3:  # epoch 2's checkpoint: half written, then the disk is full
            f.write(b"\0" * 100)
            raise OSError(28, "No space left on device")
        real(obj, f)

    monkeypatch.setattr(rbwa_io.torch, "save", save_until_disk_full)
    with pytest.raises(UserError, match=r"No space left on device\); the previous checkpoint is intact"):
        train(cfg, progress=False, log=lambda line: None)
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not list((tmp_path / "run").glob(".*.tmp"))
    monkeypatch.setattr(rbwa_io.torch, "save", real)
    resumed = train(cfg, resume=True, progress=False, log=lambda line: None)
    straight = train(_config(tmp_path / "x"), progress=False, log=lambda line: None)
    assert resumed["final_test_acc"] == straight["final_test_acc"]
    assert resumed["final_train_loss"] == straight["final_train_loss"]


def test_a_kill_between_the_last_checkpoint_and_its_metrics_line_resumes_to_the_whole_curve(tmp_path, monkeypatch):
    """The last epoch's checkpoint is written, then the process dies before metrics.jsonl gets its line: the
    resumed run has nothing left to train, and must still end with every epoch's metrics."""
    import rbwa.training.loop as t

    cfg = _config(tmp_path)
    real = t.write_metrics

    def killed_after_the_last_checkpoint(out, metrics):
        if metrics[-1]["epoch"] == cfg.epochs:
            raise SystemExit("killed")  # nothing after this point runs, as under SIGKILL
        real(out, metrics)

    monkeypatch.setattr(t, "write_metrics", killed_after_the_last_checkpoint)
    with pytest.raises(SystemExit):
        train(cfg, progress=False, log=lambda line: None)
    assert [m["epoch"] for m in read_jsonl(tmp_path / "run/metrics.jsonl")] == [0, 1, 2]
    monkeypatch.setattr(t, "write_metrics", real)
    resumed = train(cfg, resume=True, progress=False, log=lambda line: None)
    straight = train(_config(tmp_path / "x"), progress=False, log=lambda line: None)
    assert _without_seconds(read_jsonl(tmp_path / "run/metrics.jsonl")) == \
        _without_seconds(read_jsonl(tmp_path / "x/run/metrics.jsonl"))
    assert resumed["final_test_acc"] == straight["final_test_acc"] and resumed["epochs"] == 3


def test_too_little_memory_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr("rbwa.training.tasks.available_bytes", lambda device: 1000)
    with pytest.raises(UserError, match=r"needs about .* on cpu but only 1000 B is free"):
        train(_config(tmp_path), progress=False)
    assert not (tmp_path / "run").exists()


def test_the_memory_check_does_not_count_a_dataset_already_in_memory_twice(tmp_path, monkeypatch):
    """On the CPU the splits are loaded before the check, so the free memory it reads has paid for them already:
    a run whose model, optimizer and averages fit is accepted however large its data."""
    import rbwa.training.tasks as t
    from rbwa.training.config import resolve

    cfg = _config(tmp_path, train_subset=1000)
    model = t.build_model("resnet18", 10, 0.0625)
    train_split, test_split = t.prepare_data(resolve(cfg))
    data = sum(x.numel() * x.element_size() for x in (train_split.images, train_split.labels, test_split.images,
                                                       test_split.labels))
    weights = estimate_bytes(0, sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers()),
                             "rbwa", momentum=True)
    assert data > weights  # the case where counting the data again refused runs that fit
    monkeypatch.setattr(t, "available_bytes", lambda device: weights)
    t.check_memory(cfg, train_split, test_split, model, torch.device("cpu"))
    monkeypatch.setattr(t, "available_bytes", lambda device: weights - 1)
    from rbwa.training.resources import human

    with pytest.raises(UserError, match=f"needs about {human(weights)} on cpu but only {human(weights - 1)} is free"):
        t.check_memory(cfg, train_split, test_split, model, torch.device("cpu"))


def test_memory_estimate_by_hand():
    # 1000 data bytes; 10 parameters: weights + grads + momentum + one average = 4 copies; 3 buffers
    assert estimate_bytes(1000, 10, 3, "rbwa", momentum=True) == 1000 + 4 * (4 * 10 + 3)
    assert estimate_bytes(1000, 10, 3, "rbwa", momentum=True, implementation="lr_scale") == 1000 + 4 * (3 * 10 + 3)
    assert estimate_bytes(0, 10, 3, "swa", momentum=False) == 4 * (3 * 10 + 3 + 3)  # the side copy's buffers too
    assert estimate_bytes(0, 10, 0, "sgd", momentum=False) == 80


def test_file_size_limit_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    import resource
    import signal

    run = tmp_path / "run"
    args = [sys.executable, "-m", "rbwa", "train", *TRAIN, "--out", str(run), "--resume"]
    proc = subprocess.Popen(args[:-1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a new run
    while not (run / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = (run / "checkpoint.pt").read_bytes()
    limit = len(before) - 1  # the next checkpoint, the same size, cannot be written whole

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: cannot write the epoch")
    assert "the previous checkpoint is intact" in result.stderr
    assert (run / "checkpoint.pt").read_bytes() == before
    assert assert_every_file_parses(run) == 0
