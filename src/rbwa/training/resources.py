"""Memory a run needs before it starts (dataset tensor + model + optimizer + averages), and what is free."""

from __future__ import annotations

from pathlib import Path

import torch

# extra copies of the parameters each method keeps, besides the weights and their gradients
EXTRA_COPIES = {"sgd": 0, "rbwa": 1, "rbwa-e": 1, "rswa": 1, "lookahead": 1, "swa": 1, "ema": 1, "sema": 1,
                "schedulefree": 2}


def estimate_bytes(dataset_bytes: int, n_params: int, n_buffers: int, method: str, momentum: bool,
                   implementation: str = "copy") -> int:
    """Dataset + weights + gradients + momentum + averages, in bytes (float32 parameters). Pure.

    Activations are not counted: they depend on the batch size and are released after every step.
    """
    copies = 2 + int(momentum) + EXTRA_COPIES[method]  # weights, gradients, momentum, averages
    if implementation == "lr_scale" and method in ("rbwa", "rbwa-e"):
        copies -= 1
    side_buffers = n_buffers if method in ("swa", "ema") else 0
    return dataset_bytes + 4 * (copies * n_params + n_buffers + side_buffers)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
