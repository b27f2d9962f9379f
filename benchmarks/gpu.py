"""One prepared GPU check (issue 14): throughput of the paper preset, RBWA's step overhead, GPU sharing, the
language model's tokens/s (the gpu-lm preset's GPT), an end-to-end run and the CUDA tests. Everything it measures
goes into OUT/results.json (and logs beside it).

    python benchmarks/gpu.py OUT                # on a CUDA machine: about 3 minutes on one H200, measured
    python benchmarks/gpu.py OUT --dry-run      # every stage for a few steps on the CPU (tests run this)

Throughput uses synthetic batches already on the device (the loader is measured by the end-to-end stage),
so it isolates the model, the optimizer and the flags. Ratios are against eager float32 in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rbwa.averaging import RBWA
from rbwa.models import build_model

VARIANTS = {  # name: (bf16 autocast, channels_last, compile mode or None)
    "eager fp32": (False, False, None),
    "bf16 + channels_last": (True, True, None),
    "bf16 + channels_last + compile": (True, True, "default"),
    "bf16 + channels_last + compile (CUDA graphs)": (True, True, "reduce-overhead"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: torch.nn.Module, method: str, implementation: str = "copy") -> torch.optim.Optimizer:
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    return base if method == "sgd" else RBWA(base, start_step=0, implementation=implementation)


def throughput(method: str, variant: str, steps: int, device: torch.device, width: float, batch: int,
               dry_run: bool) -> float:
    """Images per second of ``steps`` training steps (after 3 warm-up steps)."""
    amp, channels_last, mode = VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = make_optimizer(model, method)
    forward = model
    if mode is not None:  # the dry run checks the dynamo path without compiling kernels on the CPU
        forward = torch.compile(model, backend="aot_eager") if dry_run else torch.compile(model, mode=mode)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def lm_throughput(method: str, param_dtype: str, steps: int, device: torch.device, dry_run: bool) -> float:
    """Tokens per second of ``steps`` training steps (after 3 warm-up steps) of the GPT of the ``gpu-lm`` preset
    (``cpu-lm``'s in a dry run), AdamW, weights held in ``param_dtype``, through the trainer's own step
    (``rbwa.training.loop.train_epoch``, ``rbwa.training.methods.build``), on random tokens already on the device."""
    from rbwa.models.gpt import GPT
    from rbwa.training.config import PRESETS, make_config
    from rbwa.training.loop import train_epoch
    from rbwa.training.methods import build

    preset = {k: v for k, v in PRESETS["cpu-lm" if dry_run else "gpu-lm"].items()}
    cfg = make_config(dataset="shakespeare", model="gpt", optimizer="adamw", method=method, param_dtype=param_dtype,
                      **{**preset, "dropout": 0.0, "start_epoch": 0})
    torch.manual_seed(0)
    model = GPT(65, cfg.context, cfg.layers, cfg.heads, cfg.embedding).to(device, getattr(torch, param_dtype))
    setup = build(cfg, model, steps + 3)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [(torch.randint(0, 65, (cfg.batch_size, cfg.context), device=device, generator=g),
                torch.randint(0, 65, (cfg.batch_size, cfg.context), device=device, generator=g))
               for _ in range(steps + 3)]
    train_epoch(model, model, setup, batches[:3], 0, amp=False)
    sync(device)
    t0 = time.perf_counter()
    train_epoch(model, model, setup, batches[3:], 3, amp=False)
    sync(device)
    return steps * cfg.batch_size * cfg.context / (time.perf_counter() - t0)


def step_overhead(steps: int, device: torch.device, width: float) -> dict[str, float]:
    """Optimizer-step time of RBWA (copy, lr_scale) over bare SGD, gradients fixed, measured side by side."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    times = {}
    for name, method, impl in (("sgd", "sgd", "copy"), ("rbwa copy", "rbwa", "copy"),
                               ("rbwa lr_scale", "rbwa", "lr_scale")):
        opt = make_optimizer(model, method, impl)
        for _ in range(3):
            opt.step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        sync(device)
        times[name] = (time.perf_counter() - t0) / steps
    return {"seconds per step": times, "rbwa copy / sgd": times["rbwa copy"] / times["sgd"],
            "rbwa lr_scale / sgd": times["rbwa lr_scale"] / times["sgd"]}


def concurrent(processes: int, steps: int, args: argparse.Namespace) -> float:
    """Total images/s of ``processes`` processes training at once on one device (bf16 + channels_last)."""
    cmd = [sys.executable, __file__, "--worker", "--steps", str(steps), "--device", args.device,
           "--width", str(args.width), "--batch", str(args.batch), str(args.out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)


def end_to_end(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A two-epoch `rbwa train` run with the GPU flags; its run directory is kept under OUT."""
    run = out / "train-run"
    data = args.data if args.data else "digits"
    flags = ["--device", args.device, "--epochs", "2", "--start-epoch", "1", "--method", "rbwa", "--dataset", data,
             "--out", str(run), "--cache-dir", str(out / "cache"), "--quiet"]
    if args.dry_run:
        flags += ["--width", "0.0625", "--train-subset", "200", "--test-subset", "100"]
    else:
        flags += ["--width", "1.0", "--amp", "bf16", "--channels-last"]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rbwa", "train", *flags], capture_output=True, text=True)
    (out / "train.log").write_text(done.stdout + done.stderr)
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    return {"command": "rbwa train " + " ".join(flags), "exit status": done.returncode,
            "wall seconds": time.perf_counter() - t0, "summary": summary}


def cuda_tests(out: Path) -> dict[str, Any]:
    # the CUDA tests' own file: collecting the whole suite would need every optional extra installed; in one
    # process (`-o addopts=`: the ini's xdist workers need pytest-xdist, which a GPU box may not have)
    done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-m", "cuda", "tests/test_cuda.py"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    (out / "cuda-tests.log").write_text(done.stdout + done.stderr)
    return {"exit status": done.returncode, "last line": (done.stdout.strip().splitlines() or [""])[-1]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for results.json, logs and the end-to-end run directory")
    p.add_argument("--dry-run", action="store_true", help="every stage for a few steps on the CPU")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (default with --dry-run)")
    p.add_argument("--steps", type=int, default=None, help="steps per throughput measurement (default: one "
                   "epoch of the paper preset, 782; 2 with --dry-run)")
    p.add_argument("--width", type=float, default=None, help="model width (default 1.0, the paper's; 0.0625 dry)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64, the paper's)")
    p.add_argument("--data", default=None, help="dataset for the end-to-end run, e.g. folder:PATH (default digits)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.steps = args.steps or (2 if args.dry_run else 782)
    args.width = args.width or (0.0625 if args.dry_run else 1.0)
    device = torch.device(args.device)
    if args.worker:
        print(throughput("sgd", "bf16 + channels_last", args.steps, device, args.width, args.batch, args.dry_run))
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is available; use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "steps": args.steps, "width": args.width,
                               "batch": args.batch, "dry run": args.dry_run, "throughput (images/s)": {}}

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    for method in ("sgd", "rbwa"):
        rows = results["throughput (images/s)"][method] = {}
        for variant in VARIANTS:
            try:
                rows[variant] = throughput(method, variant, args.steps, device, args.width, args.batch, args.dry_run)
            except Exception as e:  # one failing variant (a compile error) must not lose the others
                rows[variant] = f"failed: {type(e).__name__}: {e}"[:300]
            save()
        base = rows["eager fp32"]
        rows["ratio to eager fp32"] = {k: v / base for k, v in rows.items()
                                       if isinstance(v, float) and isinstance(base, float)}
    results["optimizer step"] = step_overhead(max(args.steps // 4, 2), device, args.width)
    save()
    lm = results["language model (tokens/s, the gpu-lm GPT, AdamW)"] = {}
    for method in ("sgd", "rbwa"):
        for dtype in ("float32", "bfloat16"):
            try:
                lm[f"{method}, weights in {dtype}"] = lm_throughput(method, dtype, max(args.steps // 8, 2), device,
                                                                      args.dry_run)
            except Exception as e:  # an out-of-memory or a kernel error must not lose the other stages
                lm[f"{method}, weights in {dtype}"] = f"failed: {type(e).__name__}: {e}"[:300]
            save()
    one = concurrent(1, max(args.steps // 2, 2), args)
    four = concurrent(4, max(args.steps // 2, 2), args)
    results["sharing one device (images/s)"] = {"1 process": one, "4 processes": four, "ratio": four / one}
    save()
    results["rbwa train, 2 epochs"] = end_to_end(args.out, args)
    save()
    results["cuda tests"] = cuda_tests(args.out) if not args.dry_run else "skipped in a dry run"
    save()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
