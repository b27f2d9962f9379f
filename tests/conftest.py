import os
from pathlib import Path

import pytest
import torch
from torch import nn

# under pytest-xdist the workers split the cores between them (torch threads, and what their subprocesses inherit),
# rather than each taking them all (2 workers of 2 threads each would oversubscribe 2 cores)
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# the project's shared data (CIFAR-10 as JPEG folders, CIFAR-100's official files), where this machine has it:
# $RBWA_SHARED_DATA, else shared/data beside the repository; the tests that need it are skipped elsewhere
SHARED_DATA = Path(os.environ.get("RBWA_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data():
    """Return the path of a folder of the shared data, or skip the test where it is absent."""
    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"{path} is absent (set RBWA_SHARED_DATA to the folder that holds {name})")
        return path
    return find


class TinyResNet(nn.Module):
    """A ResNet-like block stack with BatchNorm: enough to exercise every parameter and buffer kind."""

    def __init__(self, channels: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture
def tiny_resnet():
    return TinyResNet


@pytest.fixture
def batches():
    def make(n: int, dtype: torch.dtype = torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        return [(torch.randn(8, 3, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g))
                for _ in range(n)]
    return make


@pytest.fixture
def callback_under_ddp(tmp_path):
    """Run tests/callback_ddp_driver.py for a framework ("hf", "lightning") under torchrun with 2 processes on CPU;
    returns what each process recorded."""
    import json
    import subprocess
    import sys

    def run(framework: str) -> list[dict]:
        driver = Path(__file__).with_name("callback_ddp_driver.py")
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               str(driver), framework, str(tmp_path)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return run
