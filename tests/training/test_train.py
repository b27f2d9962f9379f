import json
from pathlib import Path

import pytest
import torch

from rbwa.errors import UserError
from rbwa.io import read_jsonl
from rbwa.training.config import METHODS, make_config
from rbwa.training.loop import Diverged, train

KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}


def digits_config(tmp_path, **kw):
    pytest.importorskip("sklearn")
    values = {"dataset": "digits", "width": 0.0625, "epochs": 3, "start_epoch": 1, "batch_size": 32,
              "train_subset": 300, "test_subset": 100, "out": str(tmp_path / "run")}
    values.update(kw)
    return make_config(**values)


def _without_seconds(metrics):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in metrics]


@pytest.fixture(scope="session")
def cifar(tmp_path_factory, shared_data):
    """The shared CIFAR-10 image folder and a cache for its decoded images."""
    return shared_data("cifar10-jpeg"), tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("method", METHODS)
def test_two_epochs_on_real_cifar10_learn_for_every_method(tmp_path, cifar, method):
    folder, cache = cifar
    # ema's default decay, 0.999, averages over ~1,000 steps: after the 16 steps of averaging here its weights are
    # still those of epoch 1 (13.4% on one CPU kind); 0.9 averages over the ~10 steps there are
    cfg = make_config(dataset=f"folder:{folder}", cache_dir=str(cache), width=0.125, epochs=2,
                      start_epoch=1, batch_size=32, train_subset=500, test_subset=500, method=method,
                      ema_decay=0.9, out=str(tmp_path / method))
    summary = train(cfg, progress=False, log=lambda line: None)
    run = tmp_path / method
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and all(set(m) == KEYS for m in metrics)
    # chance is 10%; 500 test images give a standard error of 1.3 points
    assert summary["final_test_acc"] > 14.0 and summary["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["method"] == method


def test_same_seed_same_metrics(tmp_path):
    a = train(digits_config(tmp_path / "a", method="rbwa"), progress=False, log=lambda line: None)
    b = train(digits_config(tmp_path / "b", method="rbwa"), progress=False, log=lambda line: None)
    ma, mb = read_jsonl(tmp_path / "a/run/metrics.jsonl"), read_jsonl(tmp_path / "b/run/metrics.jsonl")
    assert _without_seconds(ma) == _without_seconds(mb)  # every number but the wall time
    assert a["final_test_acc"] == b["final_test_acc"]
    c = train(digits_config(tmp_path / "c", method="rbwa", seed=1), progress=False, log=lambda line: None)
    assert _without_seconds(read_jsonl(tmp_path / "c/run/metrics.jsonl")) != _without_seconds(ma)
    assert c["status"] == "finished"


@pytest.mark.parametrize("method", ["rbwa", "swa", "schedulefree"])
def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, method):
    straight = digits_config(tmp_path / "straight", method=method, augment="standard")
    train(straight, progress=False, log=lambda line: None)

    interrupted = digits_config(tmp_path / "resumed", method=method, augment="standard")

    def stop_after_epoch_2(line):
        if "epoch 2/" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False, log=stop_after_epoch_2)
    assert len(read_jsonl(tmp_path / "resumed/run/metrics.jsonl")) == 3
    train(interrupted, resume=True, progress=False, log=lambda line: None)
    a = read_jsonl(tmp_path / "straight/run/metrics.jsonl")
    b = read_jsonl(tmp_path / "resumed/run/metrics.jsonl")
    assert _without_seconds(a) == _without_seconds(b)
    wa = torch.load(tmp_path / "straight/run/checkpoint.pt", weights_only=True)
    wb = torch.load(tmp_path / "resumed/run/checkpoint.pt", weights_only=True)
    for k, v in wa["model"].items():
        assert torch.equal(v, wb["model"][k]), k


def test_existing_run_needs_resume_and_the_same_config(tmp_path):
    cfg = digits_config(tmp_path, epochs=1, start_epoch=0)
    train(cfg, progress=False, log=lambda line: None)
    before = (tmp_path / "run/metrics.jsonl").read_bytes()
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(cfg, progress=False)
    with pytest.raises(UserError, match=r"different config \(lr, method\)"):
        train(digits_config(tmp_path, epochs=1, start_epoch=0, lr=0.1, method="rbwa"), resume=True, progress=False)
    assert train(cfg, resume=True)["status"] == "finished"  # finished: nothing to do
    assert (tmp_path / "run/metrics.jsonl").read_bytes() == before


def test_foreign_checkpoint_is_refused(tmp_path):
    cfg = digits_config(tmp_path, epochs=2)
    train(cfg, progress=False, log=lambda line: None)
    (tmp_path / "run/summary.json").unlink()
    (tmp_path / "run/checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="checkpoint .* is unreadable"):
        train(cfg, resume=True, progress=False)


def test_divergence_stops_the_run(tmp_path):
    cfg = digits_config(tmp_path, lr=1e12, momentum=0.0, weight_decay=0.0)
    with pytest.raises(Diverged, match="lower --lr"):
        train(cfg, progress=False, log=lambda line: None)
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "diverged"
    assert (tmp_path / "run/checkpoint.pt").exists()


def _spy_on_first_conv(monkeypatch, seen: list) -> None:
    """Record (activation dtype, input is channels_last, weight is channels_last) at every forward of the
    first convolution of the model that train() builds."""
    import rbwa.training.tasks as t

    real = t.build_model

    def build_model(*args, **kwargs):
        model = real(*args, **kwargs)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: seen.append(
            (o.dtype, i[0].is_contiguous(memory_format=torch.channels_last),
             m.weight.is_contiguous(memory_format=torch.channels_last))))
        return model

    monkeypatch.setattr(t, "build_model", build_model)


def test_amp_and_channels_last_on_cpu_really_apply_and_keep_float32_averages(tmp_path, monkeypatch):
    seen: list = []
    _spy_on_first_conv(monkeypatch, seen)
    # width 1/8: see the torch.compile test below for the oneDNN defect channels-last meets at width 1/16
    summary = train(digits_config(tmp_path, amp="bf16", channels_last=True, width=0.125, epochs=2, method="rbwa"),
                    progress=False, log=lambda line: None)
    assert summary["status"] == "finished" and seen
    assert set(seen) == {(torch.bfloat16, True, True)}  # every forward, training and evaluation alike
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)
    averages = [s["rbwa_average"] for s in ckpt["setup"]["optimizer"]["state"].values()]
    assert averages and all(a.dtype == torch.float32 for a in averages)  # bf16 folds would round to no change
    seen.clear()
    train(digits_config(tmp_path / "plain", epochs=1, start_epoch=0), progress=False, log=lambda line: None)
    assert set(seen) == {(torch.float32, False, False)}  # the spy can tell the difference


@pytest.mark.parametrize("method", METHODS)
def test_checkpoints_hold_only_tensors_and_plain_types(tmp_path, method):
    schedule = "constant" if method == "schedulefree" else "cosine"
    train(digits_config(tmp_path, method=method, epochs=2, lr_schedule=schedule), progress=False, log=lambda line: None)
    ckpt = torch.load(tmp_path / "run/checkpoint.pt", weights_only=True)  # raises on anything else
    assert ckpt["config"]["method"] == method and ckpt["versions"]["rbwa"]


def test_checkpoint_from_another_config_is_refused_and_a_new_version_warned_about(tmp_path):
    a, b = digits_config(tmp_path / "a", epochs=2), digits_config(tmp_path / "b", epochs=2, lr=0.1)
    for cfg in (a, b):
        train(cfg, progress=False, log=lambda line: None)
        (Path(cfg.out) / "summary.json").unlink()
    good = (tmp_path / "b/run/checkpoint.pt").read_bytes()
    (tmp_path / "b/run/checkpoint.pt").write_bytes((tmp_path / "a/run/checkpoint.pt").read_bytes())
    with pytest.raises(UserError, match=r"checkpoint .* was written for another config \(lr\); delete it"):
        train(b, resume=True, progress=False)
    (tmp_path / "b/run/checkpoint.pt").write_bytes(good)
    ckpt = torch.load(tmp_path / "b/run/checkpoint.pt", weights_only=True)
    ckpt["versions"]["git"] = "0000000"
    ckpt["epoch"] = 1  # resume from epoch 1, so epoch 2 trains again
    ckpt["metrics"] = ckpt["metrics"][:2]
    torch.save(ckpt, tmp_path / "b/run/checkpoint.pt")
    lines: list[str] = []
    train(b, resume=True, progress=False, log=lines.append)
    assert lines[0].startswith("warning: resuming under another git 0000000 -> ")
    assert "warning: resuming" in (tmp_path / "b/run/train.log").read_text()


def test_checkpoints_written_by_rbwa_0_1_still_load(tmp_path):
    from rbwa.training.checkpoint import load_checkpoint

    # 0.1 stored torch.__version__ (a TorchVersion, a str subclass) and no config in its checkpoints
    torch.save({"format": "rbwa-checkpoint-1", "epoch": 3, "versions": {"torch": torch.__version__}},
               tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", {"lr": 0.5})["epoch"] == 3


def test_cpu_kind_names_the_first_processor_and_what_torch_dispatches_to():
    from rbwa.training.provenance import cpu_kind, versions

    two = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu family\t: 6\nmodel\t\t: 207\n\n"
           "processor\t: 1\nmodel name\t: Another CPU\ncpu family\t: 25\nmodel\t\t: 1\n")
    assert cpu_kind(two, "AVX512") == "Intel(R) Xeon(R) Processor (family 6, model 207), torch AVX512"
    # an ARM /proc/cpuinfo has no model name or family; macOS has no /proc/cpuinfo: the platform's name stands in
    assert cpu_kind("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n", "DEFAULT", "aarch64") == \
        "aarch64, torch DEFAULT"
    assert cpu_kind("", "DEFAULT") == "unknown CPU, torch DEFAULT"
    assert versions()["cpu"].endswith(f", torch {torch.backends.cpu.get_cpu_capability()}")


def test_resuming_on_another_cpu_or_thread_count_is_warned_about_where_the_checkpoint_recorded_them():
    from rbwa.training.provenance import version_warning, versions

    now = versions()
    assert version_warning(now, now) is None
    assert version_warning({**now, "cpu": "X, torch AVX2", "torch_threads": 7}, now) == (
        f"warning: resuming under another cpu X, torch AVX2 -> {now['cpu']}, torch_threads 7 -> "
        f"{now['torch_threads']}; the rest of this run may not match an uninterrupted one")
    # a checkpoint written before runs recorded their CPU: nothing to compare
    assert version_warning({k: v for k, v in now.items() if k not in ("cpu", "torch_threads")}, now) is None


# width 1/8, not the digits default 1/16: inductor lays convolutions out channels-last, and on this AVX2 CPU the
# oneDNN bundled with torch 2.13 corrupts the heap in the backward of a channels-last 1x1 stride-2 convolution with
# fewer than 8 input channels (ResNet-18's first downsample at width 1/16 has 4): SIGABRT with 1 thread, a spin that
# never ends with 2. Eager mode with channels_last does the same (`aten.convolution_backward`, 4 -> 8 channels).
def test_compile_on_a_tiny_model_uses_the_compiled_forward(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = digits_config(tmp_path, compile=True, width=0.125, epochs=1, start_epoch=0, train_subset=64, test_subset=20)
    summary = train(cfg, progress=False, log=lambda line: None)
    assert summary["status"] == "finished"
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1


def test_a_resume_removes_the_temporaries_a_killed_snapshot_write_left(tmp_path):
    cfg = digits_config(tmp_path, epochs=1, start_epoch=0, snapshots_per_epoch=2)
    train(cfg, progress=False, log=lambda line: None)
    folder = tmp_path / "run/snapshots"
    stale = folder / ".00000004.pt.abc123.tmp"  # the name io._atomic gives a write it has not finished
    stale.write_bytes(b"half a snapshot")
    kept = sorted(p.name for p in folder.iterdir() if p != stale)
    train(cfg, resume=True, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == kept and len(kept) == 2


def text_config(tmp_path, **kw):
    """A tiny GPT on a small text file: 3 epochs of 9 steps, well under a second each."""
    text = tmp_path / "text.txt"
    if not text.exists():
        tmp_path.mkdir(parents=True, exist_ok=True)
        text.write_text("to be, or not to be: that is the question.\n" * 60)
    values = {"dataset": f"text:{text}", "model": "gpt", "context": 16, "layers": 1, "heads": 2, "embedding": 16,
              "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 3, "batch_size": 16,
              "epochs": 3, "start_epoch": 1, "eval_batch_size": 64, "out": str(tmp_path / "run")}
    return make_config(**{**values, **kw})


@pytest.mark.parametrize("method", ["rbwa", "ema"])
def test_a_gpt_trains_on_text_records_bits_per_character_and_resumes_where_it_would_have_been(tmp_path, method):
    straight = train(text_config(tmp_path / "a", method=method), progress=False, log=lambda line: None)
    metrics = read_jsonl(tmp_path / "a/run/metrics.jsonl")
    # 2580 characters, 17 distinct: 2322 train (145 windows of 16, 9 steps of 16 windows: a last batch of 1 is
    # dropped), 258 validate (16 windows)
    assert straight["vocab"] == 17 and straight["steps_per_epoch"] == 9
    assert straight["train_size"] == 145 * 16 and straight["test_size"] == 16 * 16
    assert all(m["test_bpc"] == pytest.approx(m["test_loss"] / 0.6931471805599453) for m in metrics)
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"]  # it learned
    saved = json.loads((tmp_path / "a/run/config.json").read_text())
    assert saved["dataset"].startswith("text:text.txt (2580 bytes, sha256 ") and str(tmp_path) not in saved["dataset"]

    def stop_after_epoch_2(line):
        if "epoch 2/" in line:
            raise KeyboardInterrupt

    interrupted = text_config(tmp_path / "b", method=method)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False, log=stop_after_epoch_2)
    train(interrupted, resume=True, progress=False, log=lambda line: None)
    assert _without_seconds(read_jsonl(tmp_path / "b/run/metrics.jsonl")) == _without_seconds(metrics)


def test_text_and_images_each_need_their_model(tmp_path):
    with pytest.raises(UserError, match="--model gpt trains on text"):
        train(text_config(tmp_path, model="resnet18"), progress=False)
    with pytest.raises(UserError, match="--model gpt trains on text"):
        train(digits_config(tmp_path, model="gpt"), progress=False)
    with pytest.raises(UserError, match="embedding width 16 must be divisible by the 3 heads"):
        train(text_config(tmp_path, heads=3), progress=False)


def test_bfloat16_weights_train_with_float32_averages(tmp_path):
    """--param-dtype bfloat16 holds the GPT's weights (and AdamW's state) in bf16; RBWA's averages stay float32, so
    its 1/(k+1) steps do not round away: the run differs from the float32 run only by rounding, and learns."""
    summary = train(text_config(tmp_path / "bf16", method="rbwa", param_dtype="bfloat16"), progress=False,
                    log=lambda line: None)
    ckpt = torch.load(tmp_path / "bf16/run/checkpoint.pt", weights_only=True)
    assert {v.dtype for v in ckpt["model"].values()} == {torch.bfloat16}
    averages = [s["rbwa_average"] for s in ckpt["setup"]["optimizer"]["state"].values() if "rbwa_average" in s]
    assert averages and {a.dtype for a in averages} == {torch.float32}
    full = train(text_config(tmp_path / "fp32", method="rbwa"), progress=False, log=lambda line: None)
    assert abs(summary["final_test_loss"] - full["final_test_loss"]) < 0.05
    metrics = read_jsonl(tmp_path / "bf16/run/metrics.jsonl")
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"] - 0.3
    with pytest.raises(UserError, match="--param-dtype bfloat16 applies to --model gpt"):
        train(digits_config(tmp_path / "img", param_dtype="bfloat16"), progress=False)


def test_a_resumed_run_keeps_the_start_epoch_it_was_made_with(tmp_path):
    """Review: a run made when the default start epoch was 10, resumed without --start-epoch, was refused as another
    config; not given, the start epoch is the run's own."""
    from rbwa.training.config import make_config
    from rbwa.training.loop import train

    values = {"dataset": "digits", "width": 0.0625, "epochs": 2, "batch_size": 32, "train_subset": 64,
              "test_subset": 32, "method": "rbwa", "out": str(tmp_path / "run")}
    first = train(make_config(**values, start_epoch=1), progress=False, log=lambda line: None)
    assert train(make_config(**values), resume=True, progress=False, log=lambda line: None) == first
