import pytest
import torch
from torch import nn


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
