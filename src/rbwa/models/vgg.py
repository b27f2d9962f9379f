"""VGG-16 with BatchNorm for 32x32 inputs (the usual CIFAR variant: 13 convolutions, one linear layer)."""

from __future__ import annotations

import torch
from torch import nn

from rbwa.models.resnet import scaled

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, plan: tuple = VGG16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = scaled(item, width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
