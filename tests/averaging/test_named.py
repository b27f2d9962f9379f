"""The named-average core (rbwa.averaging.named): what the callbacks and the trainer's side averages share."""

import pytest
import torch
from torch import nn

from rbwa.averaging.named import NamedAverages, unwrap


def moved(model: nn.Module, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def folded_twice() -> tuple[nn.Module, NamedAverages, dict[str, torch.Tensor]]:
    """A model folded at +1 and +2 (mean: the average is +1.5), its live weights then moved to +5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    named = NamedAverages("mean", write_back=None)
    for by in (1.0, 1.0):
        moved(model, by)
        named.after_step(model, 0)
    moved(model, 3.0)
    return model, named, {k: v + 1.5 for k, v in start.items()}


@pytest.mark.parametrize("wrap", [nn.DataParallel, torch.compile], ids=["DataParallel", "torch.compile"])
def test_wrapped_models_are_unwrapped_for_the_state_dict_and_the_swap(wrap):
    """Defect 4: averaged_state_dict of a wrapped model stored the live weights (its names carry `module.` or
    `_orig_mod.`), and averaged() raised 'Tensor list must have at least one tensor'."""
    model, named, want = folded_twice()
    wrapped = wrap(model)
    assert unwrap(wrapped) is model
    state = named.averaged_state_dict(wrapped)
    assert set(state) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(state[k], v)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with named.swapped(wrapped) as net:
        assert net is model
        for k, v in want.items():
            torch.testing.assert_close(model.state_dict()[k], v)
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k])


def test_averages_whose_names_match_nothing_are_one_error():
    _, named, _ = folded_twice()
    other = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"Sequential has no parameter named 2.bias, 2.weight \(2 of 4 averages\)"):
        named.averaged_state_dict(other)
    with pytest.raises(ValueError, match="has no parameter named"), named.swapped(other):
        pass


def test_before_the_first_fold_the_live_weights_are_what_is_evaluated():
    model = nn.Linear(3, 2)
    named = NamedAverages("ema", beta=0.9, write_back=None)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with named.swapped(nn.DataParallel(model)) as net:
        assert net is model
        assert all(torch.equal(v, live[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, live[k]) for k, v in named.averaged_state_dict(model).items())


def test_the_schedule_folds_every_k_steps_from_the_start_and_writes_back_every_w_folds():
    """every=2 from t=0: folds at t = 0, 2, 4; write_back=2: the 2nd fold writes the EMA back, by hand."""
    model = nn.Linear(1, 1, bias=False)
    named = NamedAverages("ema", beta=0.5, every=2, write_back=2)
    folded = []
    for t in range(-1, 5):
        with torch.no_grad():
            model.weight.fill_(float(t + 10))
        folded.append(named.after_step(model, t))
        if t == 2:  # fold 2 at weight 12: 0.5 * 10 + 0.5 * 12 = 11, written back
            assert model.weight.item() == 11.0
    assert folded == [False, True, False, True, False, True]
    assert named.folds == 3 and named.averages["weight"].item() == 0.5 * 11 + 0.5 * 14


def test_state_dict_round_trip_and_settings_check():
    _, named, want = folded_twice()
    restored = NamedAverages("mean", write_back=None)
    restored.load_state_dict(named.state_dict())
    assert restored.folds == 2 and restored.counts == named.counts
    for k in named.averages:
        assert torch.equal(restored.averages[k], named.averages[k])
    with pytest.raises(ValueError, match="different settings: average"):
        NamedAverages("ema", write_back=None).load_state_dict(named.state_dict())


def test_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="average_dtype must be None or a floating-point torch.dtype"):
        NamedAverages(average_dtype="float32")
    with pytest.raises(ValueError, match="average_dtype"):
        NamedAverages(average_dtype=torch.int32)
