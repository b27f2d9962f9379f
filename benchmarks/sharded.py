"""RBWA's fold under FSDP2 (fully_shard): its time and the averages' memory per process, at 1 and at 2 processes.

    python benchmarks/sharded.py [--width 0.5]

Starts itself under torchrun with 1 and with 2 processes (gloo, CPU, 1 thread each). In each, ResNet-18 is
sharded layer by layer with fully_shard and wrapped in RBWA; after one real step the fold alone (weight 1/2,
written back) is timed against one torch._foreach_copy_ of the same local shards (the memory-traffic floor), and
the averages' bytes held by the process are counted. Prints per-process values and the ratios 2 processes / 1.
Each process folds its own shard with no communication, so the fold's time and memory should halve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import interleaved, machine  # noqa: E402


def worker(width: float, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from rbwa import RBWA, fold_
    from rbwa.averaging.dtensor import local
    from rbwa.models import build_model

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width)
    for module in list(model.modules())[::-1]:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            fully_shard(module)
    fully_shard(model)
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), start_step=0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the first fold: the averages exist
    params = opt._params()

    @torch.no_grad()
    def floor() -> None:  # DTensors' local views may be written only without autograd, as fold_ does
        torch._foreach_copy_(local(opt.averages), local(params))

    times = interleaved({"fold": lambda: fold_(opt.averages, params, 0.5), "copy floor": floor}, rounds=40)
    averages = local(opt.averages)
    found = {"fold ms": 1e3 * times["fold"], "copy floor ms": 1e3 * times["copy floor"],
             "average MiB": sum(a.numel() * a.element_size() for a in averages) / 2**20,
             "parameters": sum(p.numel() for p in params)}
    with open(os.path.join(out, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(found, f)
    dist.destroy_process_group()
    os._exit(0)


def measure(procs: int, width: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", __file__,
               "--worker", "--width", str(width), "--out", out]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(procs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        worker(args.width, args.out)
        return
    one, two = measure(1, args.width), measure(2, args.width)
    print(f"{machine()}; ResNet-18 width {args.width} ({one[0]['parameters']:,} parameters), gloo, 1 thread a process")
    print("| processes | fold ms | copy floor ms | fold / floor | averages MiB per process |")
    print("|---|---|---|---|---|")
    for n, ranks in ((1, one), (2, two)):
        for r in ranks:
            print(f"| {n} | {r['fold ms']:.2f} | {r['copy floor ms']:.2f} | {r['fold ms'] / r['copy floor ms']:.2f} | "
                  f"{r['average MiB']:.2f} |")
    worst = max(r["fold ms"] for r in two)
    print(f"ratio 2 processes / 1: fold time {worst / one[0]['fold ms']:.2f} (the slower process), averages memory "
          f"{max(r['average MiB'] for r in two) / one[0]['average MiB']:.3f} (the larger share)")


if __name__ == "__main__":
    main()
