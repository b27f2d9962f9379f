"""The paper's Figures 3 and 5 at the paper's full scale in one GPU window (issue 23).

    python benchmarks/paper_gpu.py OUT                 # on a CUDA machine (benchmarks/paper-gpu.sh installs first)
    python benchmarks/paper_gpu.py OUT --dry-run       # every stage on the CPU at the smoke preset (a test runs it)

What it does, in order:
1. decodes both datasets once into the cache (CIFAR-10 from the shared JPEG folders, CIFAR-100 from the shared
   official files), so the runs started next do not all decode them at once;
2. a probe of about 60 s: synthetic training steps of the paper's ResNet-18 (width 1, batch 64, bf16 autocast,
   channels-last, eager) in 1 process, then in 4 and in 8 processes at once; it keeps the number of runs at once
   whose images/s per run is highest in total, and from it the number of seeds it expects to finish;
3. trains fig3 (CIFAR-10) and fig5 (CIFAR-100), preset `paper` (full width, 50 epochs, batch 64, averaging from
   epoch 10), seed 0 first, then seeds 1 and 2, that many runs at once, each under CUDA graphs
   (`--compile --compile-mode reduce-overhead`) with bf16 autocast (weights and averages stay float32). The first
   wave starts at once; a later run starts only while the time left exceeds what a run has been taking (the
   probe's estimate until one has finished). At the time limit every run still training is stopped: its
   directory keeps its last checkpoint and
   no summary, so `rbwa status` calls it interrupted, the report does not count it, and running this again
   resumes it;
4. `rbwa report OUT`, and OUT/paper-gpu.json: the probe, the plan, what finished, the times.

The plan, from what was measured on one H200 (benchmarks/RESULTS.md, 2026-11-29), before this script ever ran:
an epoch of the paper preset is 2.3 to 2.8 s of training under CUDA graphs plus about 1 s of test pass, so one
run is about 3 minutes after about 40 s of compilation; 4 eager processes sharing the GPU trained 3.0x to 3.9x
the images/s of one. Packed 4 or 8 at a time (CUDA graphs are assumed to keep about half of that gain: not
measured), the 8 runs of seed 0 should take 6 to 10 minutes: expect seed 0 of both figures to finish, or all
but one to three of its runs, inside the 9-minute default limit, and no run of seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rbwa.experiments.runner import plan
from rbwa.training.config import default_dir
from rbwa.training.rundir import run_status

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("fig3", "fig5")
GPU_FLAGS = {"device": "cuda", "amp": "bf16", "channels_last": True, "compile": True, "compile_mode": "reduce-overhead"}
# the dry run: the smoke preset on digits, on the CPU, every stage for seconds
DRY = {"preset": "smoke", "overrides": {"dataset": "digits", "train_subset": 100, "test_subset": 50},
       "budget": 120.0, "probe_seconds": 1.0, "packs": (1, 2)}
COMPILE_SECONDS = 45.0  # CUDA-graph compilation at the start of every run, measured: 39 s


def data_root(given: str | None) -> Path:
    """The shared data: --data-root, else shared/data in the repository, else ../shared/data beside it."""
    for candidate in ([Path(given)] if given else [ROOT / "shared" / "data", ROOT.parent / "shared" / "data"]):
        if (candidate / "cifar10-jpeg").is_dir() and (candidate / "cifar-100-python").is_dir():
            return candidate.resolve()
    print(f"error: no shared data (cifar10-jpeg/ and cifar-100-python/) in {given or 'shared/data or ../shared/data'}"
          "; pass --data-root", file=sys.stderr)
    sys.exit(2)


def overrides_for(experiment: str, root: Path | None, dry_run: bool) -> dict[str, Any]:
    if dry_run:
        return dict(DRY["overrides"])
    data = {"dataset": f"folder:{root / 'cifar10-jpeg'}"} if experiment == "fig3" else {"data_dir": str(root)}
    return {**data, **GPU_FLAGS}


def decode_once(root: Path) -> None:
    """Decode both datasets into the default cache once (each run would otherwise decode them itself)."""
    from rbwa.data import load_dataset

    cache = Path(default_dir("RBWA_CACHE"))
    load_dataset(f"folder:{root / 'cifar10-jpeg'}", root, cache)
    load_dataset("cifar100", root, cache)


PROBE = """
import sys, time, torch
from rbwa.models import build_model
device, width, batch, seconds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
model = build_model("resnet18", 10, width).to(device)
amp = device == "cuda"
if amp:
    model = model.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x = torch.randn(batch, 3, 32, 32, device=device)
y = torch.randint(0, 10, (batch,), device=device)
def step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(5):
    step()
sync = torch.cuda.synchronize if amp else (lambda: None)
sync()
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < seconds:
    step()
    n += 1
sync()
print(n * batch / (time.perf_counter() - t0))
"""


def probe(packs: tuple[int, ...], seconds: float, dry_run: bool) -> dict[int, float]:
    """Images/s per process of synthetic training steps, with ``k`` processes at once, for each ``k`` in packs."""
    device, width = ("cpu", 0.0625) if dry_run else ("cuda", 1.0)
    found = {}
    for k in packs:
        procs = [subprocess.Popen([sys.executable, "-c", PROBE, device, str(width), "64", str(seconds)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(k)]
        rates = [float(p.communicate()[0].strip()) for p in procs]
        found[k] = sum(rates) / k
    return found


def images_per_run(cfg: Any, train_size: int, test_size: int) -> int:
    return cfg.epochs * train_size + (cfg.epochs + 1) * test_size


def start(run: Any) -> subprocess.Popen:
    """One run in its own process (``rbwa train --resume`` through the launcher's entry point), logs in its dir."""
    code = "import json, sys; from rbwa.experiments.launch import run_one; print(run_one(json.loads(sys.argv[1])))"
    Path(run.config.out).mkdir(parents=True, exist_ok=True)
    log = open(Path(run.config.out) / "paper-gpu.log", "a")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(run.config.to_dict())], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop a run at the time limit: its last checkpoint stays, its summary is never written."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="every stage on the CPU, smoke preset, digits")
    ap.add_argument("--budget", type=float, default=None, help="seconds of training wall time (default: 540)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds to train while time remains (default: 3)")
    ap.add_argument("--data-root", default=None, help="folder holding cifar10-jpeg/ and cifar-100-python/")
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --dry-run to check every stage on the CPU", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    budget = args.budget or (DRY["budget"] if args.dry_run else 540.0)
    preset = DRY["preset"] if args.dry_run else "paper"
    root = None if args.dry_run else data_root(args.data_root)
    out = args.out.absolute()
    if root is not None:
        decode_once(root)

    # the probe: how many runs at once pay
    packs = DRY["packs"] if args.dry_run else (1, 4, 8)
    rates = probe(packs, DRY["probe_seconds"] if args.dry_run else 12.0, args.dry_run)
    pack = max(packs, key=lambda k: (k * rates[k], -k))
    sizes = (100, 50) if args.dry_run else (50_000, 10_000)
    seeds = {e: plan(e, preset, args.seeds, out, overrides_for(e, root, args.dry_run)) for e in EXPERIMENTS}
    queue = [r for seed in range(args.seeds) for e in EXPERIMENTS for r in seeds[e] if r.seed == seed]
    per_run = images_per_run(queue[0].config, *sizes) / rates[pack] + (0 if args.dry_run else COMPILE_SECONDS)
    expected = int(pack * (budget // per_run))
    print(f"probe: images/s per run {', '.join(f'{k} at once {v:,.0f}' for k, v in rates.items())}; {pack} at "
          f"once, about {per_run:.0f} s a run: expect {min(expected, len(queue))} of {len(queue)} runs in "
          f"{budget:.0f} s", flush=True)

    # the runs, `pack` at a time, while a run still fits in the time left
    deadline = time.perf_counter() + budget
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    took: list[float] = []
    codes: dict[str, int] = {}
    skipped = []
    while queue or running:
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                took.append(time.perf_counter() - t0)
                codes[name] = proc.returncode
                del running[name]
        while queue and len(running) < pack:
            run = queue[0]
            if run_status(Path(run.config.out)) in ("finished", "diverged"):
                queue.pop(0)
                continue
            # the first wave always starts (a run the limit cuts off resumes on the next call); later runs only
            # while what a run has taken so far (the probe's estimate until one finishes) still fits
            estimate = max(took) if took else per_run
            first_wave = len(codes) + len(running) < pack
            if not first_wave and deadline - time.perf_counter() < estimate:
                skipped += [r.name for r in queue]
                queue.clear()
                break
            running[run.name] = (start(queue.pop(0)), time.perf_counter())
            print(f"started {run.name} ({len(running)} at once)", flush=True)
        if time.perf_counter() >= deadline and running:
            for proc, _ in running.values():
                stop(proc)
            print(f"time limit: stopped {', '.join(running)}", flush=True)
            codes.update({name: -9 for name in running})
            running.clear()
        time.sleep(0.2 if args.dry_run else 2.0)

    from rbwa.analysis.report import write_report

    write_report(out)
    statuses = {r.name: run_status(Path(r.config.out)) for e in EXPERIMENTS for r in seeds[e]}
    record = {"probe images/s per run": {str(k): v for k, v in rates.items()}, "runs at once": pack,
              "estimated seconds per run": per_run, "expected runs": expected, "budget seconds": budget,
              "statuses": statuses, "exit status (-9: stopped at the time limit)": codes,
              "not started (no time)": skipped, "seconds per finished run": took,
              "wall seconds": time.perf_counter() - t_start, "device": torch.cuda.get_device_name(0)
              if torch.cuda.is_available() and not args.dry_run else "cpu (dry run)"}
    (out / "paper-gpu.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    done = sum(s == "finished" for s in statuses.values())
    print(f"{done} of {len(statuses)} runs finished; report in {out / 'report.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
