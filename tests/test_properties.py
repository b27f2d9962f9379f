"""Property-based tests (hypothesis) of the config parser and the averaging wrapper's arguments."""

import math
import typing

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rbwa import RBWA
from rbwa.errors import UserError
from rbwa.training.config import FIELDS, TrainConfig, make_config, resolve
from rbwa.training.validate import validate

values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-5, 60), max_size=3),
                   st.sampled_from(["rbwa", "sgd", "resnet18", "digits", "cosine", "folds", "cpu", "bf16"]))
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=6))
def test_config_parser_accepts_or_names_the_problem(overrides):
    try:
        cfg = make_config(**overrides)
    except UserError as e:
        assert str(e)
        return
    hints = typing.get_type_hints(TrainConfig)
    for key, value in overrides.items():  # what was accepted has the declared type
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, float) and math.isnan(value))
        base = [a for a in typing.get_args(hints[key]) if a is not type(None)] or [hints[key]]
        assert got is None or isinstance(got, typing.get_origin(base[0]) or base[0])
    try:
        validate(resolve(cfg))
    except UserError as e:
        assert str(e)


@settings(max_examples=300, deadline=None)
@given(start=st.integers(-5, 50), beta=st.floats(allow_nan=True, allow_infinity=True), every=st.integers(-3, 8),
       average=st.sampled_from(["mean", "ema", "median"]), counter=st.sampled_from(["folds", "epochs", "days"]),
       spe=st.one_of(st.none(), st.integers(-1, 5)))
def test_wrapper_arguments_accepted_exactly_on_their_domain(start, beta, every, average, counter, spe):
    p = [torch.zeros(2, requires_grad=True)]
    valid = (start >= 0 and 0 <= beta < 1 and every >= 1 and average in ("mean", "ema")
             and counter in ("folds", "epochs")
             and (counter == "folds" or (average == "mean" and spe is not None and spe >= 1)))
    try:
        opt = RBWA(torch.optim.SGD(p, lr=0.1), start_step=start, average=average, beta=beta, every=every,
                   counter=counter, steps_per_epoch=spe)
    except ValueError as e:
        assert not valid
        assert any(name in str(e) for name in ("start_step", "beta", "every", "average", "counter", "steps_per_epoch"))
        return
    assert valid
    folds = 0
    for t in range(40):
        assert opt.folds_at(t) == (t >= start and (t - start) % every == 0)
        if opt.folds_at(t):
            w = opt.weight_at(t, folds)
            first = folds == 0 or (counter == "epochs" and (t - start) < spe)
            assert 0 < w <= 1 and (w == 1.0) == (first or (average == "ema" and 1.0 - beta == 1.0))
            folds += 1
