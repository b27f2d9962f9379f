"""Model registry: name -> constructor(num_classes, width)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rbwa.models.resnet import ResNet18
from rbwa.models.vgg import VGG

MODELS: dict[str, Callable[..., nn.Module]] = {"resnet18": ResNet18, "vgg16": VGG}


def build_model(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, width=width)
