"""`rbwa train --fsdp` (rbwa.training.fsdp): a tiny float64 GPT sharded by FSDP2 on 2 gloo processes under torchrun
equals the
same run on 1 process, for RBWA, RBWA-E and a side EMA (checkpoints, averages, snapshots, validation losses), and its
whole checkpoints resume at the other process count."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rbwa.errors import UserError
from rbwa.training.config import make_config
from rbwa.training.loop import train

# 1,000 characters of 12 letters: 900 to train on in 112 windows of 8, 14 steps of 8 windows an epoch
RUNS = {"rbwa": {"method": "rbwa"}, "rbwa-e": {"method": "rbwa-e", "beta": 0.8},
        "side ema": {"method": "rbwa-e", "beta": 0.8, "write_back": 0, "snapshots_per_epoch": 2}}
COMMON = {"model": "gpt", "context": 8, "layers": 2, "heads": 2, "embedding": 8, "batch_size": 8, "epochs": 2,
          "start_epoch": 1, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.1, "warmup_steps": 4,
          "param_dtype": "float64", "eval_batch_size": 16, "fsdp": True}

# the third evaluation (after epoch 2's training) fails, on every process: epoch 1's checkpoint stays
STOPPING = textwrap.dedent("""
    def stopping(evaluate):
        calls = []
        def stopped(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return evaluate(*args, **kwargs)
        return stopped
""")

DRIVER = STOPPING + textwrap.dedent("""
    import json, os, sys
    import rbwa.training.loop as t
    from rbwa.training.config import make_config
    from rbwa.training.distributed import end_distributed
    runs, stop = eval(sys.argv[1]), sys.argv[2] == "stop"
    real_build, kinds = t.build, []
    def build(cfg, model, steps):  # what the trainer built on: each parameter's kind (DTensor: sharded)
        setup = real_build(cfg, model, steps)
        kinds.append(sorted({type(p).__name__ for group in setup.optimizer.param_groups for p in group["params"]}))
        return setup
    t.build = build
    if stop:
        t.evaluate = stopping(t.evaluate)
    for settings, out in runs:
        try:
            t.train(make_config(**settings, out=out), resume=not stop and sys.argv[2] == "resume", progress=False,
                    log=lambda line: None)
        except KeyboardInterrupt:
            pass
    with open(os.path.join(os.path.dirname(runs[0][1]), f"kinds-{sys.argv[2]}-{os.environ['RANK']}.json"), "w") as f:
        json.dump(kinds, f)
    end_distributed(0)
""")


def _torchrun(tmp_path, runs: list, mode: str) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(driver),
           repr(runs), mode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def _difference(a, b) -> float:
    """The largest difference between two nested states' floating-point tensors; their structure must match."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype
        return (a - b).abs().max().item() if a.is_floating_point() and a.numel() else float(not torch.equal(a, b))
    if isinstance(a, dict):
        assert set(a) == set(b)
        return max([_difference(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([_difference(x, y) for x, y in zip(a, b)] or [0.0])
    assert a == b
    return 0.0


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text("".join("abcdefghijkl"[i] for i in torch.randint(0, 12, (1000,), generator=g).tolist()))
    return f"text:{path}"


def _stopped_after_epoch_1(settings, out, monkeypatch):
    import rbwa.training.loop as t

    scope: dict = {}
    exec(STOPPING, scope)
    with monkeypatch.context() as m:
        m.setattr(t, "evaluate", scope["stopping"](t.evaluate))
        with pytest.raises(KeyboardInterrupt):
            train(make_config(**settings, out=str(out)), progress=False, log=lambda line: None)


def test_two_sharded_processes_equal_one_and_resume_at_the_other_count(tmp_path, text, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    settings = {name: {**COMMON, **run, "dataset": text} for name, run in RUNS.items()}
    # 1 process: each run straight, and the side EMA stopped after epoch 1 (for 2 processes to resume)
    for name, s in settings.items():
        train(make_config(**s, out=str(one / name)), progress=False, log=lambda line: None)
    _stopped_after_epoch_1(settings["side ema"], two / "resumed", monkeypatch)
    assert torch.load(two / "resumed" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    # 2 processes: each run straight, the 1-process checkpoint resumed, and the side EMA stopped after epoch 1
    _torchrun(tmp_path, [(s, str(two / name)) for name, s in settings.items()], "straight")
    _torchrun(tmp_path, [(settings["side ema"], str(two / "resumed"))], "resume")
    _torchrun(tmp_path, [(settings["side ema"], str(one / "resumed"))], "stop")
    for mode, runs in (("straight", 3), ("resume", 1), ("stop", 1)):  # every process trained shards (DTensors)
        for rank in (0, 1):
            folder = one if mode == "stop" else two
            assert json.loads((folder / f"kinds-{mode}-{rank}.json").read_text()) == [["DTensor"]] * runs
    assert torch.load(one / "resumed" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    train(make_config(**settings["side ema"], out=str(one / "resumed")), resume=True, progress=False,
          log=lambda line: None)
    for name in (*RUNS, "resumed"):
        reference = one / ("side ema" if name == "resumed" else name)
        for run in ([two / name, one / "resumed"] if name == "resumed" else [two / name]):
            a = torch.load(reference / "checkpoint.pt", weights_only=False)
            b = torch.load(run / "checkpoint.pt", weights_only=False)
            assert a["epoch"] == b["epoch"] == 2
            # the weights, AdamW's moments and the averages, whole: float64, only the reduction order differs
            assert _difference(a["model"], b["model"]) < 1e-12, (name, run)
            assert _difference(a["setup"], b["setup"]) < 1e-12, (name, run)
            assert a["setup"]["optimizer"]["param_groups"][0]["rbwa"]["folds"] == 14
            losses = [[m["test_loss"] for m in ckpt["metrics"]] for ckpt in (a, b)]
            assert max(abs(x - y) for x, y in zip(*losses, strict=True)) < 1e-12, (name, run)
    # the side EMA's validation saw the EMA (swapped into the shards), not the live weights
    side, live = (torch.load(one / n / "checkpoint.pt", weights_only=False) for n in ("side ema", "rbwa-e"))
    assert side["metrics"][-1]["test_loss"] != live["metrics"][-1]["test_loss"]
    # snapshots gathered whole: the 2-process files are the 1-process ones
    steps = sorted(p.name for p in (one / "side ema" / "snapshots").iterdir())
    assert steps == sorted(p.name for p in (two / "side ema" / "snapshots").iterdir()) and len(steps) == 4
    for step in steps:
        a, b = (torch.load(d / "side ema" / "snapshots" / step, weights_only=True) for d in (one, two))
        assert _difference(a, b) < 1e-12


def test_what_fsdp_refuses_in_one_line():
    from rbwa.training.validate import validate

    with pytest.raises(UserError, match="--fsdp shards --model gpt"):
        validate(make_config(fsdp=True))
    with pytest.raises(UserError, match="--fsdp does not run --method ema .* use --method rbwa-e --write-back 0"):
        validate(make_config(fsdp=True, model="gpt", dataset="shakespeare", augment="none", method="ema"))


def test_fsdp_without_torchrun_says_in_one_line_that_it_trains_whole(tmp_path, text):
    """Issue 41: `--fsdp` in one process trained unsharded without a word."""
    lines: list[str] = []
    train(make_config(**{**COMMON, "epochs": 1, "start_epoch": 0}, dataset=text, out=str(tmp_path / "one")),
          progress=False, log=lines.append)
    said = [line for line in lines if "--fsdp" in line]
    assert said == ["warning: --fsdp with one process (not started by torchrun): nothing to shard, the model trains "
                    "whole; run under `torchrun --nproc-per-node N` to shard it"]
    assert said[0] in (tmp_path / "one" / "train.log").read_text()
