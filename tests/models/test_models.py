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


def _gpt(layers: int = 2):
    from rbwa.models.gpt import GPT

    torch.manual_seed(0)
    return GPT(vocab=11, context=8, layers=layers, heads=2, width=16)


def test_gpt_parameter_count_matches_its_formula():
    from rbwa.models.gpt import parameter_count

    for layers in (1, 3):
        model = _gpt(layers)
        assert sum(p.numel() for p in model.parameters()) == parameter_count(11, 8, layers, 16)
    # nanoGPT's CPU size on Tiny Shakespeare (65 characters, context 64, 4 layers, 128 wide): about 0.8M
    assert parameter_count(65, 64, 4, 128) == 65 * 128 + 64 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 256 == 809_856


def test_a_future_token_never_changes_an_earlier_positions_logits():
    model = _gpt().eval()
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])


def test_the_tie_holds_after_a_checkpoint_round_trip(tmp_path):
    model = _gpt()
    assert model.head.weight is model.tokens.weight
    torch.save(model.state_dict(), tmp_path / "gpt.pt")
    fresh = _gpt()
    with torch.no_grad():
        fresh.tokens.weight.zero_()
    fresh.load_state_dict(torch.load(tmp_path / "gpt.pt", weights_only=True))
    assert fresh.head.weight is fresh.tokens.weight and torch.equal(fresh.head.weight, model.tokens.weight)


def test_generation_is_seeded_and_refuses_nothing_longer_than_its_context():
    model = _gpt().eval()
    start = torch.zeros(1, 1, dtype=torch.int64)
    a = model.generate(start, 12, torch.Generator().manual_seed(5))
    assert a.shape == (1, 13) and torch.equal(a, model.generate(start, 12, torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="longer than the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.int64))
