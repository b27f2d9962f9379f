import math

import pytest
import torch

from rbwa import RBWA
from rbwa.training.config import make_config
from rbwa.training.methods import SideAverage, build, lr_factor, reestimates_bn


def test_lr_factor_by_hand():
    args = {"total_steps": 100, "start_step": 40, "milestone_steps": [40, 70], "gamma": 0.1, "beta": 0.8}
    assert lr_factor("constant", 77, **args) == 1.0
    assert [lr_factor("step", s, **args) for s in (39, 40, 69, 70)] == [1.0, pytest.approx(0.1), pytest.approx(0.1),
                                                                         pytest.approx(0.01)]
    assert lr_factor("cosine", 0, **args) == 1.0 and lr_factor("cosine", 50, **args) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, **args) == pytest.approx(0.0, abs=1e-12)
    assert [lr_factor("harmonic", s, **args) for s in (39, 40, 41, 43)] == [1.0, 1.0, 0.5, 0.25]
    assert [lr_factor("rbwa-e", s, **args) for s in (39, 40, 41, 99)] == [1.0, 1.0, pytest.approx(0.2),
                                                                          pytest.approx(0.2)]


@pytest.mark.parametrize(("method", "expected"), [
    ("rbwa", {"average": "mean", "start_step": 30, "every": 1}),
    ("rbwa-e", {"average": "ema", "beta": 0.9, "start_step": 30}),
    ("rswa", {"average": "mean", "every": 10, "start_step": 39}),
    ("lookahead", {"average": "ema", "every": 5, "beta": 0.5, "start_step": 34}),
])
def test_recurrent_methods_are_the_wrapper(tiny_resnet, method, expected):
    setup = build(make_config(method=method, start_epoch=3, epochs=5), tiny_resnet(), steps_per_epoch=10)
    assert isinstance(setup.optimizer, RBWA) and setup.side is None
    for key, value in expected.items():
        assert getattr(setup.optimizer, key) == value


def test_sgd_uses_the_config(tiny_resnet):
    setup = build(make_config(method="sgd", lr=0.3, momentum=0.8, weight_decay=0.01, nesterov=True), tiny_resnet(), 10)
    group = setup.optimizer.param_groups[0]
    assert type(setup.optimizer) is torch.optim.SGD
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.3, 0.8, 0.01, True)


def test_step_schedule_defaults_to_decay_at_start_epoch(tiny_resnet, batches):
    from rbwa.training.config import resolve

    model = tiny_resnet()
    setup = build(resolve(make_config(method="sgd", lr_schedule="step", start_epoch=1, epochs=3, lr=1.0)), model, 2)
    lrs = []
    for step, (x, y) in enumerate(batches(5)):
        lrs.append(setup.optimizer.param_groups[0]["lr"])
        torch.nn.functional.cross_entropy(model(x), y).backward()
        setup.optimizer.step()
        setup.after_step(model, step)
    assert lrs == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1)]


def test_swa_side_copy_averages_end_of_epoch_weights(tiny_resnet):
    model = tiny_resnet()
    side = SideAverage(model, "swa", start_step=4, steps_per_epoch=2, ema_decay=0.9)
    snapshots = []
    for step in range(10):
        with torch.no_grad():
            model.head.bias.fill_(float(step))
        side.after_step(model, step)
        if step >= 4 and (step - 3) % 2 == 0:
            snapshots.append(float(step))
    assert snapshots == [5.0, 7.0, 9.0]
    torch.testing.assert_close(side.named.averages["head.bias"], torch.full((3,), 7.0))


def test_ema_side_copy(tiny_resnet):
    model = tiny_resnet()
    side = SideAverage(model, "ema", start_step=1, steps_per_epoch=5, ema_decay=0.5)
    for step in range(4):
        with torch.no_grad():
            model.head.bias.fill_(float(step))
        side.after_step(model, step)
    # first update copies (1), then 0.5 * avg + 0.5 * new: 1 -> 1.5 -> 2.25
    assert math.isclose(side.named.averages["head.bias"][0].item(), 2.25)


def test_a_side_average_is_evaluated_swapped_in_with_batchnorm_reestimated(tiny_resnet, batches):
    model = tiny_resnet()
    setup = build(make_config(method="swa", start_epoch=0, epochs=2), model, steps_per_epoch=1)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with setup.evaluated(model, []) as net:  # nothing averaged yet: the live model, its statistics untouched
        assert net is model
    setup.side.after_step(model, 0)
    with torch.no_grad():
        model.stem[0].weight.add_(1.0)  # the live weights move on; the average stays at step 0's
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(2)
    with setup.evaluated(model, data) as net:
        assert net is model
        assert torch.equal(model.stem[0].weight, live["stem.0.weight"])  # the average is swapped in
        x = torch.cat([b[0] for b in data])
        expected = model.stem[0](x).mean(dim=(0, 2, 3))
        torch.testing.assert_close(model.stem[1].running_mean, expected, atol=1e-5, rtol=1e-4)
    for k, v in model.state_dict().items():  # the live weights and statistics are back, bit for bit
        assert torch.equal(v, moved[k]), k


def test_side_averages_of_bfloat16_weights_are_float32_and_keep_the_exact_ema(tiny_resnet):
    """Defect 3: a bf16 side copy lost 66% of an EMA's movement at decay 0.999; the named core keeps float32."""
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    side = SideAverage(model, "ema", start_step=0, steps_per_epoch=10, ema_decay=0.999)
    exact = model.weight.detach().double().clone()
    for step in range(200):
        with torch.no_grad():
            model.weight.add_(0.01)  # a drift that bf16 can hold in the weights themselves
        side.after_step(model, step)
        exact = model.weight.detach().double().clone() if step == 0 else 0.999 * exact + 0.001 * model.weight.double()
    average = side.named.averages["weight"]
    assert average.dtype == torch.float32
    moved, want = (average.double() - exact).abs().max().item(), (exact - model.weight.double()).abs().max().item()
    assert moved < 1e-3 * want


def test_schedulefree_switches_modes(tiny_resnet, batches):
    model = tiny_resnet()
    setup = build(make_config(method="schedulefree"), model, 10)
    setup.train_mode()
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    setup.optimizer.step()
    with setup.evaluated(model, batches(1)):
        assert setup.optimizer.param_groups[0]["train_mode"] is False


@pytest.mark.parametrize(("method", "schedule"), [("rbwa", "harmonic"), ("rbwa-e", "rbwa-e")])
def test_recurrent_method_equals_sgd_on_its_fold_schedule(tiny_resnet, batches, method, schedule):
    """The controls' exact twins: SGD on the fold schedule takes the recurrent method's steps (float64)."""
    data = batches(7, dtype=torch.float64)
    common = {"start_epoch": 1, "epochs": 4, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "beta": 0.8}
    weights = []
    for cfg in (make_config(method=method, **common), make_config(method="sgd", lr_schedule=schedule, **common)):
        torch.manual_seed(0)
        model = tiny_resnet().double()
        setup = build(cfg, model, steps_per_epoch=2)
        for step, (x, y) in enumerate(data):
            setup.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            setup.optimizer.step()
            setup.after_step(model, step)
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_write_back_methods_evaluate_with_batchnorm_re_estimated(tiny_resnet):
    from rbwa.training.config import make_config
    from rbwa.training.methods import build

    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))) for _ in range(4)]
    for overrides, write_back in (({"method": "sema"}, 4), ({"method": "rbwa-e", "write_back": 0}, None),
                                  ({"method": "rbwa-e", "write_back": 3}, 3)):
        model = tiny_resnet()
        setup = build(make_config(start_epoch=0, ema_decay=0.9, **overrides), model, steps_per_epoch=4)
        assert setup.reestimate_bn and setup.optimizer.write_back == write_back
        for step, (x, y) in enumerate(batches[:2]):  # two folds: none of the three has written back yet
            setup.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            setup.optimizer.step()
            setup.after_step(model, step)
        live = {k: v.clone() for k, v in model.state_dict().items()}
        averages = setup.optimizer.averages
        assert not all(torch.equal(p, a) for p, a in zip(model.parameters(), averages, strict=True))
        with setup.evaluated(model, [x for x, _ in batches]) as evaluated:
            # every member is evaluated on its average, never on the live weights between two write-backs
            assert all(torch.equal(p, a) for p, a in zip(evaluated.parameters(), averages, strict=True))
            assert int(evaluated.stem[1].num_batches_tracked) == 4  # update_bn: one pass over the 4 batches
        # after the block the live weights and BatchNorm statistics are back, bit for bit: they keep training
        assert evaluated is model and all(torch.equal(v, model.state_dict()[k]) for k, v in live.items())
    plain = build(make_config(method="rbwa-e"), tiny_resnet(), steps_per_epoch=4)
    assert not plain.reestimate_bn


def test_write_back_flag_is_checked():
    from rbwa.errors import UserError
    from rbwa.training.config import make_config, resolve
    from rbwa.training.validate import validate

    with pytest.raises(UserError, match="--write-back applies to rbwa and rbwa-e"):
        validate(resolve(make_config(method="sgd", write_back=0)))
    with pytest.raises(UserError, match="write back must be >= 0"):
        validate(resolve(make_config(method="rbwa-e", write_back=-1)))


@pytest.mark.parametrize(("method", "write_back", "expected"), [
    ("sgd", 1, False), ("rbwa", 1, False), ("rbwa-e", 1, False), ("rswa", 1, False), ("lookahead", 1, False),
    ("rbwa", 0, True), ("rbwa-e", 100, True), ("sema", 1, True), ("swa", 1, True), ("ema", 1, True),
    ("schedulefree", 1, True)])
def test_which_methods_re_estimate_batchnorm(tiny_resnet, method, write_back, expected):
    """By hand: BatchNorm is re-estimated exactly where the evaluated weights are not the trained ones; the
    trainer's setup follows the same rule."""
    assert reestimates_bn(method, write_back) is expected
    cfg = make_config(method=method, write_back=write_back, epochs=2, start_epoch=1)
    assert build(cfg, tiny_resnet(), steps_per_epoch=4).reestimate_bn is expected


def test_warmup_and_wsd_by_hand():
    from rbwa.training.methods import lr_factor

    # 100 steps, the last 20% decayed linearly to 0: 1 until step 80, then (100 - step) / 20
    wsd = [lr_factor("wsd", t, 100, 0, [], 0.1, 0.9, decay_fraction=0.2) for t in (0, 79, 80, 90, 99)]
    assert wsd == [1.0, 1.0, 1.0, 0.5, 0.05]
    # a 4-step warmup multiplies any schedule: 1/4, 2/4, 3/4, then the schedule itself
    cosine = [lr_factor("cosine", t, 100, 0, [], 0.1, 0.9) for t in range(5)]
    warm = [lr_factor("cosine", t, 100, 0, [], 0.1, 0.9, warmup_steps=4) for t in range(5)]
    assert warm == pytest.approx([c * w for c, w in zip(cosine, (0.25, 0.5, 0.75, 1.0, 1.0))])


def test_adamw_decays_matrices_and_embeddings_only():
    from rbwa.models.gpt import GPT
    from rbwa.training.config import make_config
    from rbwa.training.methods import base_optimizer

    model = GPT(vocab=5, context=4, layers=1, heads=2, width=8)
    opt = base_optimizer(make_config(optimizer="adamw", weight_decay=0.1, lr=1e-3), model)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {p.dim() for p in decayed["params"]} == {2} and {p.dim() for p in plain["params"]} == {1}
    assert sum(p is model.tokens.weight for p in decayed["params"]) == 1  # the tied head is listed once


def test_a_side_average_saved_by_rbwa_0_3_as_an_averaged_model_resumes(tiny_resnet):
    """Checkpoints of rbwa < 0.4 hold an AveragedModel's state dict as the side average: it loads by name."""
    from torch.optim.swa_utils import AveragedModel

    model = tiny_resnet()
    old = AveragedModel(model)
    old.update_parameters(model)
    with torch.no_grad():
        model.head.bias.add_(2.0)
    old.update_parameters(model)
    side = SideAverage(model, "swa", start_step=0, steps_per_epoch=1, ema_decay=0.9)
    side.load_state_dict(old.state_dict())
    assert side.started and side.named.folds == 2 and set(side.named.averages) == {n for n, _ in
                                                                                    model.named_parameters()}
    for name, p in old.module.named_parameters():
        assert torch.equal(side.named.averages[name], p), name
