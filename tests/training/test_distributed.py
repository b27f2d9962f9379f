"""DDP under torchrun, on CPU with the gloo backend and 2 processes."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("sklearn")
# 141 images at batch 32: four full batches and a last one of 13, split 6 + 7 between 2 processes
ARGS = {"dataset": "digits", "width": 0.125, "batch_size": 32, "train_subset": 141, "test_subset": 64,
        "epochs": 2, "start_epoch": 1, "method": "rbwa", "sync_bn": True, "lr": 0.001}

DRIVER = textwrap.dedent("""
    import os, sys, torch
    import rbwa.training.loop as t
    from rbwa.training.config import make_config
    from rbwa.training.distributed import end_distributed
    captured = {}
    real_build = t.build
    def build(cfg, model, steps):
        captured["setup"], captured["model"] = real_build(cfg, model, steps), model
        return captured["setup"]
    t.build = build
    writes = []  # every file this process writes through the trainer's atomic writers
    for name in ("atomic_write_json", "atomic_write_bytes", "atomic_torch_save"):
        real = getattr(t, name)
        setattr(t, name, lambda *a, _real=real, **k: (writes.append(a), _real(*a, **k))[1])
    t.train(make_config(**eval(sys.argv[1]), out=sys.argv[2]), progress=False, log=lambda line: None)
    opt, model = captured["setup"].optimizer, captured["model"]
    rank = os.environ.get("RANK", "0")
    torch.save({"averages": opt.averages, "folds": opt.folds, "model": model.state_dict(), "writes": len(writes)},
               os.path.join(sys.argv[3], f"rank{rank}.pt"))
    end_distributed(0)  # as `rbwa train` ends under torchrun
""")


def _run(tmp_path, name, nproc, threads=1):
    out = tmp_path / name
    out.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), str(driver), repr(ARGS), str(out / "run"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_two_processes_match_one_and_agree_with_each_other(tmp_path):
    two = _run(tmp_path, "two", 2)
    one = _run(tmp_path, "one", 1)
    # the float noise of training itself: the same one-process run with another summation order (threads)
    noise_run = _run(tmp_path, "noise", 1, threads=2)
    r0, r1 = torch.load(two / "rank0.pt"), torch.load(two / "rank1.pt")
    single, other = torch.load(one / "rank0.pt"), torch.load(noise_run / "rank0.pt")
    # the averaging state is identical on every rank: it folds identical weights
    assert r0["folds"] == r1["folds"] == single["folds"] > 0
    for a, b in zip(r0["averages"], r1["averages"], strict=True):
        assert torch.equal(a, b)
    def max_diff(a, b):  # over the weights and the BatchNorm running statistics (large variances: relative)
        return max(((a[k] - b[k]).abs() / (1 + b[k].abs())).max().item() for k in a if a[k].is_floating_point())

    counts = [k for k in r0["model"] if k.endswith("num_batches_tracked")]
    assert counts and all(r0["model"][k] == single["model"][k] == 2 * 5 for k in counts)  # 5 steps an epoch

    for key, value in r0["model"].items():
        assert torch.equal(value, r1["model"][key]), key
    # the global batch is the same, so 2 processes equal 1 up to float summation order: within the
    # spread that merely changing the thread count gives (tiny BatchNorm nets on digits amplify it)
    noise = max_diff(single["model"], other["model"])
    assert max_diff(single["model"], r0["model"]) <= 10 * max(noise, 1e-6)
    assert max_diff(single["model"], r0["model"]) < 0.05  # the thread-count noise alone reaches 0.02 here
    # only rank 0 wrote the run directory, and it is complete
    assert {p.name for p in (two / "run").iterdir()} >= {"config.json", "metrics.jsonl", "summary.json"}
    assert r1["writes"] == 0 and r0["writes"] == single["writes"] > 0


def test_global_batch_must_split_evenly(monkeypatch):
    from rbwa.errors import UserError
    from rbwa.training.config import make_config
    from rbwa.training.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"batch size 33 \(the global batch\) is not divisible by 2 processes"):
        init_distributed(make_config(batch_size=33))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed(make_config(batch_size=33)) == (0, 1, torch.device("cpu"))


BN_DRIVER = textwrap.dedent("""
    import os, sys, torch
    import torch.distributed as dist
    from rbwa.models.syncbn import GlobalBatchNorm2d, convert_global_bn
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4) * (1 + i) + 5 * i for i in range(3)]  # global batches, unequal stats
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        bn = convert_global_bn(torch.nn.BatchNorm2d(3, momentum=None))  # as swa_utils.update_bn sets it
        for b in batches:
            bn(b.chunk(world)[rank].to(dtype))
        out[str(dtype)] = (bn.running_mean.clone(), bn.running_var.clone(), bn.running_mean.dtype)
    if rank == 0:
        torch.save(out, sys.argv[1])
    dist.barrier()
    from rbwa.training.distributed import end_distributed
    end_distributed(0)  # the trainer's own exit: see its docstring
""")


def test_global_batchnorm_cumulative_average_and_float32_statistics(tmp_path):
    """momentum=None (update_bn's cumulative average) gives nn.BatchNorm2d's running statistics of the global
    batches, and bf16 inputs accumulate in float32; 2 real gloo processes."""
    driver = tmp_path / "bn.py"
    driver.write_text(BN_DRIVER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(driver),
           str(tmp_path / "bn.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "bn.pt")
    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 4, 4) * (1 + i) + 5 * i for i in range(3)]
    reference = torch.nn.BatchNorm2d(3, momentum=None)
    for b in batches:
        reference(b)
    mean, var, dtype = got[str(torch.float32)]
    torch.testing.assert_close(mean, reference.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, reference.running_var, rtol=1e-5, atol=1e-5)
    # by hand: the cumulative average of the three batch means is near (0 + 5 + 10) / 3 = 5
    assert abs(mean.mean().item() - 5.0) < 0.5
    bmean, bvar, bdtype = got[str(torch.bfloat16)]
    assert bdtype == torch.float32  # bf16 inputs rounded once, statistics summed in float32
    torch.testing.assert_close(bmean, reference.running_mean, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(bvar, reference.running_var, rtol=2e-2, atol=5e-2)


GRAD_DRIVER = textwrap.dedent("""
    import sys, torch
    import torch.distributed as dist
    from rbwa.data.loader import BatchLoader
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (13, 3, 2, 2), dtype=torch.uint8), torch.randint(0, 3, (13,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loader = BatchLoader(images, labels, 13, torch.zeros(3), torch.ones(3), shuffle=True, rank=rank, world=world)
    (x, y), = list(loader)
    weight = loader.loss_weights()[0] if sys.argv[2] == "weighted" else 1.0
    (torch.nn.functional.cross_entropy(ddp(x.double()), y) * weight).backward()
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], sys.argv[1])
    dist.barrier()
    from rbwa.training.distributed import end_distributed
    end_distributed(0)  # the trainer's own exit: see its docstring
""")


def test_an_uneven_last_batch_gives_the_global_batch_gradient(tmp_path):
    """13 images on 2 processes (6 + 7): with each share's loss weighted, DDP's averaged gradient is the
    13-image gradient of one process to float64 precision; unweighted, it is not."""
    driver = tmp_path / "grad.py"
    driver.write_text(GRAD_DRIVER)
    grads = {}
    for mode in ("weighted", "unweighted"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(driver),
               str(tmp_path / f"{mode}.pt"), mode]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        grads[mode] = torch.load(tmp_path / f"{mode}.pt")
    from rbwa.data.loader import BatchLoader

    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (13, 3, 2, 2), dtype=torch.uint8), torch.randint(0, 3, (13,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    (x, y), = list(BatchLoader(images, labels, 13, torch.zeros(3), torch.ones(3), shuffle=True))
    torch.nn.functional.cross_entropy(model(x.double()), y).backward()
    for mine, theirs in zip(grads["weighted"], [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    assert max((a - b).abs().max().item() for a, b in zip(grads["unweighted"], grads["weighted"])) > 1e-4
