import pytest
import torch

from rbwa.models import build_model


@pytest.mark.parametrize(("name", "params"), [("resnet18", 11_173_962), ("vgg16", 14_724_042)])
def test_standard_parameter_counts(name, params):
    assert sum(p.numel() for p in build_model(name, 10).parameters()) == params


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("width", [0.0625, 0.125])
def test_output_shape_and_width(name, width):
    model = build_model(name, num_classes=100, width=width).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    narrow = sum(p.numel() for p in model.parameters())
    assert narrow < sum(p.numel() for p in build_model(name, 100, width * 2).parameters())


def test_resnet_has_cifar_stem():
    model = build_model("resnet18", 10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        build_model("resnet50", 10)
