"""GPU checks (issue 14), run by `pytest -m cuda` and by benchmarks/gpu.py; skipped where no CUDA GPU is."""

import pytest
import torch

from rbwa.averaging import RBWA
from rbwa.data.loader import BatchLoader, crop_flip
from rbwa.models import build_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_autocast_and_channels_last_really_apply_and_averages_stay_float32():
    model = build_model("resnet18", 10, 0.25).cuda().to(memory_format=torch.channels_last)
    seen = []
    model.stem[0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, i[0].is_contiguous(
        memory_format=torch.channels_last))))
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), start_step=0)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), torch.zeros(8, dtype=torch.long, device="cuda"))
    loss.backward()
    opt.step()
    assert seen == [(torch.bfloat16, True)]
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert {a.dtype for a in opt.averages} == {torch.float32} and opt.averages[0].is_cuda


def test_compiled_forward_is_the_one_used():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = build_model("resnet18", 10, 0.125).cuda()
    compiled = torch.compile(model)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
    assert counters["stats"]["unique_graphs"] >= 1


def test_loader_on_the_gpu_gives_the_cpu_batches():
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(10)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    batches = {dev: list(BatchLoader(images, labels, 4, mean, std, device=dev, shuffle=True, augment=True, seed=3))
               for dev in ("cpu", "cuda")}
    for (xc, yc), (xg, yg) in zip(batches["cpu"], batches["cuda"], strict=True):
        assert xg.is_cuda and torch.equal(yc, yg.cpu()) and torch.equal(xc, xg.cpu())
    dy, dx, flip = torch.tensor([0, 8]), torch.tensor([4, 2]), torch.tensor([False, True])
    assert torch.equal(crop_flip(images[:2], dy, dx, flip), crop_flip(images[:2].cuda(), dy.cuda(), dx.cuda(),
                                                                      flip.cuda()).cpu())


def test_the_trainer_runs_rbwa_under_cuda_graphs(tmp_path):
    """`--compile --compile-mode reduce-overhead` (CUDA graphs) trains RBWA to the same place as eager: the
    written-back weights land in the parameters the captured graphs read."""
    pytest.importorskip("sklearn")
    from rbwa.training.config import make_config
    from rbwa.training.loop import train

    common = {"dataset": "digits", "device": "cuda", "epochs": 3, "start_epoch": 1, "method": "rbwa", "width": 0.25,
              "cache_dir": str(tmp_path / "cache")}
    eager = train(make_config(**common, out=str(tmp_path / "eager")), progress=False, log=lambda line: None)
    graphs = train(make_config(**common, compile=True, compile_mode="reduce-overhead", out=str(tmp_path / "graphs")),
                   progress=False, log=lambda line: None)
    assert graphs["status"] == "finished" and graphs["final_test_acc"] > 80
    assert abs(graphs["final_test_acc"] - eager["final_test_acc"]) < 3  # float32 either way; kernels differ


def test_the_training_split_is_on_the_gpu_once(tmp_path, monkeypatch):
    """The training and BatchNorm loaders share one device copy of the training split."""
    import rbwa.training.tasks as t
    from rbwa.training.config import make_config
    from rbwa.training.loop import train

    seen = []
    real = t.BatchLoader

    def spy(images, *args, **kwargs):
        loader = real(images, *args, **kwargs)
        seen.append(loader.images.data_ptr())
        return loader

    monkeypatch.setattr(t, "BatchLoader", spy)
    cfg = make_config(dataset="digits", width=0.0625, epochs=1, start_epoch=0, method="swa", device="cuda",
                      out=str(tmp_path / "run"))
    train(cfg, progress=False, log=lambda line: None)
    assert len(seen) == 3 and seen[0] == seen[1] != seen[2]  # train and BatchNorm loaders: one copy; test: its own


def test_the_hf_callback_folds_shards_under_the_trainers_fsdp2_and_resumes(tmp_path):
    """The Trainer with Accelerate's FSDP2 (on every GPU, at most 2): the side EMA's averages are DTensor shards, its
    checkpoint holds them whole, and a run resumed after epoch 2 ends with the uninterrupted run's averages."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    driver = Path(__file__).with_name("hf_fsdp_cuda_driver.py")
    processes = min(2, torch.cuda.device_count())
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={processes}", str(driver), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["sharded"] and found["saved whole"] and found["folds"][0] == found["folds"][1] > 0
    assert found["resumed difference"] < 1e-6
