import io

import pytest
import torch
from torch import nn

from rbwa import RBWA, fold_, fold_reference_, fold_weight, lookahead, rbwa_e, rswa, sema


class RandomStep(torch.optim.Optimizer):
    """A 'step' that adds seeded noise and records the live weights right after it (the snapshots)."""

    def __init__(self, params, seed: int = 0):
        super().__init__(params, {"lr": 1.0})
        self.gen = torch.Generator().manual_seed(seed)
        self.snapshots: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        for p in params:
            p.add_(torch.randn(p.shape, generator=self.gen, dtype=p.dtype))
        self.snapshots.append([p.clone() for p in params])


def test_fold_weight_by_hand():
    assert [fold_weight("mean", n) for n in range(4)] == [1.0, 1 / 2, 1 / 3, 1 / 4]
    assert [fold_weight("ema", n, beta=0.9) for n in range(3)] == [1.0, pytest.approx(0.1), pytest.approx(0.1)]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("average", ["mean", "ema"])
def test_average_equals_closed_form(average, every, foreach):
    params = [torch.zeros(5, dtype=torch.float64, requires_grad=True),
              torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)]
    base = RandomStep(params)
    opt = RBWA(base, start_step=2, average=average, beta=0.8, every=every, foreach=foreach)
    for _ in range(17):
        opt.step()
    folded = [base.snapshots[t] for t in range(17) if t >= 2 and (t - 2) % every == 0]
    for i in range(len(params)):
        snaps = [s[i] for s in folded]
        if average == "mean":
            expected = sum(snaps) / len(snaps)
        else:  # EWMA seeded with the first snapshot: beta^(n-1) * s_1 + sum (1-beta) beta^(n-j) s_j
            expected = snaps[0]
            for s in snaps[1:]:
                expected = 0.8 * expected + 0.2 * s
        torch.testing.assert_close(opt.averages[i], expected, rtol=0, atol=1e-12)
    # the steps after the last fold moved the live weights away from the average; before them they agreed
    assert opt.folds == len(folded)


def test_foreach_and_reference_paths_agree_bitwise():
    g = torch.Generator().manual_seed(1)
    avgs = [torch.randn(7, generator=g), torch.randn(3, 4, generator=g)]
    params = [torch.randn(7, generator=g), torch.randn(3, 4, generator=g)]
    a2, p2 = [a.clone() for a in avgs], [p.clone() for p in params]
    fold_(avgs, params, 0.25)
    fold_reference_(a2, p2, 0.25)
    for x, y in zip(avgs + params, a2 + p2):
        assert torch.equal(x, y)
    assert torch.equal(avgs[0], params[0])  # the live weights are reset to the average


def _train(model, opt, batches, lr_factor=None):
    loss_fn = nn.CrossEntropyLoss()
    base_lrs = [g["lr"] for g in opt.param_groups]
    for t, (x, y) in enumerate(batches):
        if lr_factor is not None:
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * lr_factor(t)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def _state(model):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def _max_diff(a, b):
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("average", ["mean", "ema"])
def test_rbwa_is_base_optimizer_with_scaled_lr(tiny_resnet, batches, opt_name, average):
    data = batches(36, dtype=torch.float64)
    start = 10

    def factor(t):
        return 1.0 if t <= start else (1.0 / (t - start + 1) if average == "mean" else 1 - 0.9)

    torch.manual_seed(0)
    ref = tiny_resnet().double()
    runs = {}
    for impl in ["copy", "lr_scale", "bare"]:
        model = tiny_resnet().double()
        model.load_state_dict(ref.state_dict())
        base = OPTIMIZERS[opt_name](model.parameters())
        if impl == "bare":
            _train(model, base, data, lr_factor=factor)
        else:
            _train(model, RBWA(base, start_step=start, average=average, beta=0.9, implementation=impl), data)
        runs[impl] = _state(model)
    assert _max_diff(runs["copy"], runs["bare"]) < 1e-10
    assert _max_diff(runs["lr_scale"], runs["bare"]) < 1e-10
    assert _max_diff(runs["copy"], runs["lr_scale"]) < 1e-10
    assert _max_diff(runs["copy"], _state(ref)) > 1e-3  # it trained


def test_epoch_counter_is_per_epoch_harmonic_schedule(tiny_resnet, batches):
    data = batches(30, dtype=torch.float64)
    spe, start = 4, 8
    torch.manual_seed(0)
    ref = tiny_resnet().double()
    out = []
    for impl in ["copy", "bare"]:
        model = tiny_resnet().double()
        model.load_state_dict(ref.state_dict())
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if impl == "bare":
            _train(model, base, data, lr_factor=lambda t: 1.0 if t < start else 1.0 / ((t - start) // spe + 1))
        else:
            _train(model, RBWA(base, start_step=start, counter="epochs", steps_per_epoch=spe), data)
        out.append(_state(model))
    assert _max_diff(*out) < 1e-10


def _run_with_resume(tiny_resnet, batches, make_opt, save_at=None):
    torch.manual_seed(0)
    model = tiny_resnet()
    opt = make_opt(model)
    data = batches(20)
    loss_fn = nn.CrossEntropyLoss()
    for t, (x, y) in enumerate(data):
        if t == save_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
            buf.seek(0)
            ckpt = torch.load(buf)
            torch.manual_seed(123)
            model = tiny_resnet()  # a fresh model and optimizer, different weights until restored
            opt = make_opt(model)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["opt"])
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return _state(model), opt


@pytest.mark.parametrize("impl", ["copy", "lr_scale"])
def test_state_round_trip_is_bit_identical(tiny_resnet, batches, impl):
    def make_opt(model):
        base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return RBWA(base, start_step=4, implementation=impl)

    straight, opt1 = _run_with_resume(tiny_resnet, batches, make_opt)
    resumed, opt2 = _run_with_resume(tiny_resnet, batches, make_opt, save_at=10)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert (opt2.steps, opt2.folds) == (opt1.steps, opt1.folds) == (20, 16)


def test_state_dict_from_other_settings_is_refused(tiny_resnet):
    model = tiny_resnet()
    a = RBWA(torch.optim.SGD(model.parameters(), lr=0.1), average="mean")
    b = RBWA(torch.optim.SGD(model.parameters(), lr=0.1), average="ema")
    with pytest.raises(ValueError, match="average"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="not an RBWA state_dict"):
        b.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_lr_scale_keeps_user_lr_and_works_with_schedulers(tiny_resnet, batches):
    model = tiny_resnet()
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.1), start_step=1, implementation="lr_scale")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for x, y in batches(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert opt.state_dict()["param_groups"][0]["lr"] == pytest.approx(0.025)
    assert opt.optimizer.param_groups is opt.param_groups


def test_lr_scale_refuses_nonlinear_optimizers(tiny_resnet):
    model = tiny_resnet()
    with pytest.raises(ValueError, match="Adagrad"):
        RBWA(torch.optim.Adagrad(model.parameters()), implementation="lr_scale")
    with pytest.raises(ValueError, match="every=1"):
        RBWA(torch.optim.SGD(model.parameters(), lr=0.1), every=2, implementation="lr_scale")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"), ({"every": 0}, "every"), ({"start_step": -1}, "start_step"),
     ({"average": "median"}, "average"), ({"counter": "days"}, "counter"),
     ({"counter": "epochs"}, "steps_per_epoch"), ({"implementation": "magic"}, "implementation")],
)
def test_bad_arguments_name_the_argument(tiny_resnet, kwargs, name):
    model = tiny_resnet()
    with pytest.raises(ValueError, match=name):
        RBWA(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_what_the_constructor_cannot_run_is_refused_there(tiny_resnet):
    """Issue 41: RBWA(model) failed with an AttributeError, average_dtype="float32" at the first step with "Invalid
    device string", average_dtype=torch.int32 in a kernel, and RBWA(RBWA(opt)) trained silently."""
    model = tiny_resnet()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="RBWA wraps a torch.optim.Optimizer, got TinyResNet"):
        RBWA(model)
    with pytest.raises(TypeError, match=r"RBWA\(RBWA\(...\)\) would fold twice"):
        RBWA(RBWA(sgd))
    for dtype in ("float32", torch.int32, torch.float8_e4m3fn):  # float8: no lerp kernel
        with pytest.raises(ValueError, match="average_dtype must be None or a floating-point torch.dtype"):
            RBWA(sgd, average_dtype=dtype)
    assert RBWA(sgd, average_dtype=torch.float64).average_dtype == torch.float64


def test_recipes():
    p = [torch.zeros(2, requires_grad=True)]
    assert (rbwa_e(torch.optim.SGD(p, lr=0.1)).average, rbwa_e(torch.optim.SGD(p, lr=0.1)).beta) == ("ema", 0.9)
    r = rswa(torch.optim.SGD(p, lr=0.1), steps_per_epoch=10, start_epoch=2)
    assert [t for t in range(60) if r.folds_at(t)] == [29, 39, 49, 59]
    la = lookahead(torch.optim.SGD(p, lr=0.1), k=5, alpha=0.5)
    assert [t for t in range(16) if la.folds_at(t)] == [4, 9, 14] and la.beta == 0.5


def test_lookahead_matches_slow_weight_update():
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    base = RandomStep([p], seed=3)
    la = lookahead(base, k=3, alpha=0.5)
    for _ in range(9):
        la.step()
    s = [snap[0] for snap in base.snapshots]
    slow = s[2]  # the first sync takes the fast weights as they are
    slow = slow + 0.5 * (s[5] - slow)
    slow = slow + 0.5 * (s[8] - slow)
    torch.testing.assert_close(p.detach(), slow, rtol=0, atol=1e-12)


def test_lr_multipliers_follow_the_fold_rule_by_hand():
    opt = RBWA(torch.optim.SGD([torch.zeros(1)], lr=0.1), start_step=2)
    assert opt.lr_multipliers(5) == [1.0, 1.0, 1.0, 1 / 2, 1 / 3]  # the first fold takes the weights as they are
    by_epoch = RBWA(torch.optim.SGD([torch.zeros(1)], lr=0.1), start_step=2, counter="epochs", steps_per_epoch=2)
    assert by_epoch.lr_multipliers(7) == [1.0, 1.0, 1.0, 1.0, 1 / 2, 1 / 2, 1 / 3]
    ema = RBWA(torch.optim.SGD([torch.zeros(1)], lr=0.1), start_step=1, average="ema", beta=0.9)
    assert ema.lr_multipliers(4) == pytest.approx([1.0, 1.0, 0.1, 0.1])
    assert opt.steps == 0 and opt.folds == 0  # a look at the schedule takes no step


# ---- the write-back period ----------------------------------------------------------------------------
def _grad(w: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed, step-dependent gradient field, so that trajectories can be recomputed by hand."""
    return torch.sin(w * (t + 1)) + 0.1 * t


def _run(opt, w: torch.Tensor, steps: int) -> list[torch.Tensor]:
    seen = []
    for t in range(steps):
        w.grad = _grad(w.detach(), t)
        opt.step()
        seen.append(w.detach().clone())
    return seen


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("average", ["mean", "ema"])
def test_write_back_every_third_fold_by_hand(average, foreach):
    w = torch.linspace(-1, 1, 5, dtype=torch.float64).requires_grad_()
    opt = RBWA(torch.optim.SGD([w], lr=0.1), start_step=1, average=average, beta=0.8, every=2, write_back=3,
               foreach=foreach)
    seen = _run(opt, w, 14)
    # by hand: plain SGD steps; steps 1, 3, 5, ... fold (weights 1, then 1/2, 1/3, ... or 0.2); every third
    # fold (the 3rd, 6th, ...) writes the average back into the live weights
    v, avg, folds = torch.linspace(-1, 1, 5, dtype=torch.float64), None, 0
    for t in range(14):
        v = v - 0.1 * _grad(v, t)
        if t >= 1 and (t - 1) % 2 == 0:
            weight = fold_weight(average, folds, 0.8)
            avg = v.clone() if avg is None else avg + weight * (v - avg)
            folds += 1
            if folds % 3 == 0:
                v = avg.clone()
        torch.testing.assert_close(seen[t], v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(opt.averages[0], avg, rtol=1e-12, atol=1e-12)
    assert opt.folds == folds == 7


def test_write_back_one_is_the_paper_family_and_sema_switches_once_an_epoch():
    def trajectory(make):
        w = torch.linspace(-1, 1, 5, dtype=torch.float64).requires_grad_()
        return _run(make(torch.optim.SGD([w], lr=0.1, momentum=0.9)), w, 12)

    for a, b in zip(trajectory(lambda o: RBWA(o, start_step=2, average="ema", write_back=1)),
                    trajectory(lambda o: rbwa_e(o, start_step=2)), strict=True):
        assert torch.equal(a, b)
    # Switch EMA with 4 steps an epoch: the live weights are the EMA exactly after steps 3, 7, 11
    w = torch.linspace(-1, 1, 5, dtype=torch.float64).requires_grad_()
    opt = sema(torch.optim.SGD([w], lr=0.1), steps_per_epoch=4, beta=0.5)
    for t in range(12):
        w.grad = _grad(w.detach(), t)
        opt.step()
        assert torch.equal(w.detach(), opt.averages[0]) == (t % 4 == 3 or t == 0), t


def test_write_back_never_leaves_the_live_weights_alone_and_keeps_swa_utils_average():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def trajectory(wrap):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        opt = wrap(opt) if wrap else opt
        side = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
        x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            side.update_parameters(model)
        return model, opt, side

    bare, _, side = trajectory(None)
    live, opt, _ = trajectory(lambda o: RBWA(o, start_step=0, average="ema", beta=0.9, write_back=None))
    for p, q in zip(bare.parameters(), live.parameters(), strict=True):
        assert torch.equal(p, q)  # untouched: exactly the base optimizer's trajectory
    for avg, ref in zip(opt.averages, side.module.parameters(), strict=True):
        torch.testing.assert_close(avg, ref, rtol=1e-12, atol=1e-12)


def test_write_back_arguments_and_old_states():
    w = torch.zeros(2, requires_grad=True)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="write_back must be an integer >= 1"):
            RBWA(torch.optim.SGD([w], lr=0.1), write_back=bad)
    with pytest.raises(ValueError, match="lr_scale' needs write_back=1"):
        RBWA(torch.optim.SGD([w], lr=0.1), implementation="lr_scale", write_back=None)
    opt = RBWA(torch.optim.SGD([w], lr=0.1, momentum=0.9))
    w.grad = torch.ones(2)
    opt.step()
    settings = {k: v for k, v in opt._settings().items() if k not in ("write_back", "average_dtype")}
    old = {"base": opt.optimizer.state_dict(),  # the form of rbwa 0.1 (no write_back) and 0.2
           "rbwa": {"settings": settings, "steps": 1, "folds": 1, "averages": [torch.tensor([7.0, 8.0])]}}
    again = RBWA(torch.optim.SGD([w], lr=0.1, momentum=0.9))
    again.load_state_dict(old)
    assert (again.steps, again.folds, again.averages[0].tolist()) == (1, 1, [7.0, 8.0])
    assert torch.equal(again.optimizer.state[w]["momentum_buffer"], opt.optimizer.state[w]["momentum_buffer"])
    with pytest.raises(ValueError, match="different settings: write_back"):
        RBWA(torch.optim.SGD([w], lr=0.1), write_back=2).load_state_dict(old)
    with pytest.raises(ValueError, match="not an RBWA state_dict"):
        again.load_state_dict(opt.optimizer.state_dict())


def test_fold_named_keys_averages_by_name_and_starts_a_joining_parameter_at_its_first_fold():
    from rbwa.averaging.fold import fold_named

    a, b = torch.tensor([0.0, 4.0]), torch.tensor([10.0])
    averages, counts = {}, {}
    mean = lambda folds: fold_weight("mean", folds)  # noqa: E731
    fold_named(averages, counts, [("a", a)], mean)  # a's first fold: taken as it is
    a += 2.0
    fold_named(averages, counts, [("a", a)], mean)  # (a0 + a1) / 2 = [1, 5], written back
    assert averages["a"].tolist() == a.tolist() == [1.0, 5.0] and counts == {"a": 2}
    b += 1.0  # b joins (unfrozen), a is frozen: b's first fold takes it as it is, never a's average
    fold_named(averages, counts, [("b", b)], mean)
    assert averages["b"].tolist() == b.tolist() == [11.0] and averages["a"].tolist() == [1.0, 5.0]
    a += 3.0
    b += 3.0  # both fold, with weights of their own counts: a's third fold 1/3, b's second 1/2
    fold_named(averages, counts, [("a", a), ("b", b)], mean)
    assert a.tolist() == [2.0, 6.0] and b.tolist() == [12.5] and counts == {"a": 3, "b": 2}


def test_a_deep_copy_keeps_the_base_optimizer_counters_and_averages(tiny_resnet, batches):
    import copy

    model = tiny_resnet()
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), start_step=1)
    data = batches(4)
    for x, y in data[:2]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    twin_model, twin = copy.deepcopy((model, opt))  # copied together, as a trainer's checkpoint-in-memory would
    assert (twin.steps, twin.folds) == (2, 1) and isinstance(twin.optimizer, torch.optim.SGD)
    assert twin.param_groups is twin.optimizer.param_groups and twin.averages[0] is not opt.averages[0]
    for m, o in ((model, opt), (twin_model, twin)):
        for x, y in data[2:]:
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_group_added_to_the_base_optimizer_after_averaging_began_is_named(tiny_resnet, batches):
    model = tiny_resnet()
    *early, late = model.parameters()
    base = torch.optim.SGD(early, lr=0.1)
    opt = RBWA(base, start_step=0)
    (x, y), = batches(1)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # the first fold: averaging has begun
    base.add_param_group({"params": [late]})
    with pytest.raises(RuntimeError, match="holds 11 parameters but RBWA averages 10: a parameter group was added"):
        opt.step()
    with pytest.raises(RuntimeError, match="cannot add a parameter group after averaging has started"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})


def _bf16_rbwa(steps: int, average_dtype=None) -> tuple[list[torch.Tensor], RBWA, torch.Tensor]:
    """RBWA on a bfloat16 parameter pulled towards a target (gradient w - target, lr 0.5): the live weights
    after every step, the optimizer, the target."""
    torch.manual_seed(0)
    target = torch.randn(256)
    w = nn.Parameter(torch.zeros(256, dtype=torch.bfloat16))
    opt = RBWA(torch.optim.SGD([w], lr=0.5), start_step=0, average_dtype=average_dtype)
    seen = []
    for _ in range(steps):
        w.grad = (w.float() - target).to(torch.bfloat16)
        opt.step()
        seen.append(w.detach().float().clone())
    return seen, opt, target


def test_bf16_weights_keep_moving_with_a_float32_average_where_a_bf16_average_freezes():
    frozen, opt16, target = _bf16_rbwa(400, average_dtype=torch.bfloat16)
    moving, opt32, _ = _bf16_rbwa(400)
    assert opt16.averages[0].dtype == torch.bfloat16 and opt32.averages[0].dtype == torch.float32  # the default
    # a 1/(k+1) step below half a bf16 unit rounds to nothing: from step 100 on the bf16 average never moves
    assert torch.equal(frozen[99], frozen[-1])
    assert (moving[-1] - moving[199]).abs().max() > 0  # the float32 average still moves the weights...
    assert (moving[-1] - target).abs().mean() < 0.5 * (frozen[-1] - target).abs().mean()  # ...towards the target
    assert moving[-1].tolist() == opt32.averages[0].to(torch.bfloat16).float().tolist()  # written back, rounded


def test_the_float32_average_of_bf16_weights_is_the_float64_oracle_to_bf16_precision():
    _, opt, target = _bf16_rbwa(400)
    torch.manual_seed(0)
    w = nn.Parameter(torch.zeros(256, dtype=torch.bfloat16))
    sgd, avg = torch.optim.SGD([w], lr=0.5), None
    for k in range(400):  # the same recurrence with the mean in float64
        w.grad = (w.float() - target).to(torch.bfloat16)
        sgd.step()
        avg = w.detach().double() if avg is None else avg + (w.detach().double() - avg) / (k + 1)
        with torch.no_grad():
            w.copy_(avg)
    relative = (opt.averages[0].double() - avg).abs() / avg.abs().clamp_min(1e-3)
    assert relative.max() < 2.0**-8  # one bf16 unit: where the two means round a weight differently


def _trained(tiny_resnet, batches, write_back=None):
    model = tiny_resnet()
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), start_step=1, average="ema",
               write_back=write_back)
    for x, y in batches(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_evaluating_with_the_average_swaps_it_in_and_the_live_weights_back_even_on_an_error(tiny_resnet, batches):
    model, opt = _trained(tiny_resnet, batches)
    live = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(p, a) for p, a in zip(live, opt.averages))  # a side average differs from them
    with opt.averaged(model) as evaluated:
        assert evaluated is model and all(torch.equal(p, a) for p, a in zip(model.parameters(), opt.averages))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    with pytest.raises(KeyError), opt.averaged(model):
        raise KeyError("an error while evaluating")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))
    fresh = tiny_resnet()
    before = RBWA(torch.optim.SGD(fresh.parameters(), lr=0.1), start_step=5)
    with before.averaged(fresh):  # no average before the first fold: the live weights stay
        pass


def test_a_checkpoint_written_while_evaluating_with_the_average_stores_each_as_it_is(tiny_resnet, batches):
    model, opt = _trained(tiny_resnet, batches)
    live = {k: v.clone() for k, v in model.state_dict().items()}
    averages = [a.clone() for a in opt.averages]
    with opt.averaged(model):
        saved = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, saved)
    saved.seek(0)
    ckpt = torch.load(saved, weights_only=True)
    assert all(torch.equal(ckpt["model"][k], v) for k, v in live.items())  # the live weights, not the average
    stored = [s["rbwa_average"] for s in ckpt["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(stored, averages, strict=True))  # the average, not the weights


def test_a_compiled_forward_sees_the_average(tiny_resnet, batches):
    model, opt = _trained(tiny_resnet, batches)
    model.eval()
    compiled = torch.compile(model, backend="aot_eager")  # dynamo's graph, no C++ compilation
    (x, _), = batches(1)
    live_out = compiled(x).detach()
    reference = tiny_resnet()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p, a in zip(reference.parameters(), opt.averages):
            p.copy_(a)
    reference.eval()
    with opt.averaged(model):
        torch.testing.assert_close(compiled(x), reference(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled(x), live_out, rtol=0, atol=0)


def test_batchnorm_is_re_estimated_on_the_average_inside_and_restored_after(tiny_resnet, batches):
    from torch.optim.swa_utils import update_bn

    model, opt = _trained(tiny_resnet, batches)
    data = [x for x, _ in batches(3, seed=1)]
    live_buffers = [b.clone() for b in model.buffers()]
    reference = tiny_resnet()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p, a in zip(reference.parameters(), opt.averages):
            p.copy_(a)
    update_bn(data, reference)
    with opt.averaged(model, bn_batches=data):
        for b, r in zip(model.buffers(), reference.buffers(), strict=True):
            assert torch.equal(b, r)  # statistics of the average
    assert all(torch.equal(b, c) for b, c in zip(model.buffers(), live_buffers))  # the live ones again


class Tied(nn.Module):
    """An output layer tied to the token embedding, as GPT-2's lm_head is."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def test_a_checkpoint_written_inside_averaged_stores_the_live_weights_under_every_tied_name():
    torch.manual_seed(0)
    model = Tied()
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.5), start_step=0, write_back=None)
    for _ in range(3):
        x = torch.randint(0, 5, (4,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), x).backward()
        opt.step()
    live = model.embed.weight.detach().clone()
    assert not torch.equal(live, opt.averages[0])
    with opt.averaged(model):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)  # written while the parameters hold the average
    buffer.seek(0)
    saved = torch.load(buffer)
    assert torch.equal(saved["embed.weight"], live) and torch.equal(saved["head.weight"], live)
    fresh = Tied()
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.head.weight, live)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lr_scale_refuses_low_precision_parameters_and_names_copy(dtype):
    """lr/(k+1) steps added straight to bf16/fp16 weights round away; copy keeps float32 averages."""
    w = torch.zeros(3, dtype=dtype, requires_grad=True)
    with pytest.raises(ValueError, match=f"rounds away; use implementation='copy'.*{str(dtype)}|{str(dtype)}.*copy"):
        RBWA(torch.optim.SGD([w], lr=0.1), implementation="lr_scale")
    RBWA(torch.optim.SGD([w], lr=0.1), implementation="copy")  # accepted


def test_a_state_saved_before_the_first_fold_loads_with_no_average(tiny_resnet, batches):
    """Before its first fold a state dict carries stand-in copies of the parameters (marked not started): loaded,
    they are no average, so evaluating with the average keeps the live weights."""
    model, data = tiny_resnet(), batches(3)
    opt = RBWA(torch.optim.SGD(model.parameters(), lr=0.1), start_step=5)
    loss = nn.functional.cross_entropy
    for x, y in data[:2]:
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    saved = opt.state_dict()
    again = RBWA(torch.optim.SGD(model.parameters(), lr=0.1), start_step=5)
    again.load_state_dict(saved)
    assert again.averages is None and again.steps == 2
    x, y = data[2]
    again.zero_grad()
    loss(model(x), y).backward()
    again.step()  # step 2 < start_step: no fold, the weights move away from the stand-ins
    live = [p.detach().clone() for p in model.parameters()]
    with again.averaged(model):
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), live))


@pytest.mark.parametrize("average", ["mean", "ema"])
def test_rbwa_over_adamw_on_a_gpt_is_adamw_with_the_fold_weight_as_lr_factor(average):
    """float64, AdamW with decoupled weight decay on the matrices only (rbwa.training.methods.decay_groups), a tied GPT:
    RBWA is AdamW with the LR times 1/(k+1) (mean) or 1 - beta (ema) from the start step, to rounding."""
    from rbwa.models.gpt import GPT
    from rbwa.training.methods import decay_groups

    start, steps = 3, 12
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, 7, (4, 6), generator=g) for _ in range(steps)]

    def run(wrapped: bool):
        torch.manual_seed(0)
        model = GPT(vocab=7, context=5, layers=1, heads=2, width=8).double()
        base = torch.optim.AdamW(decay_groups(model, 0.1), lr=1e-2)
        opt = RBWA(base, start_step=start, average=average, beta=0.9) if wrapped else base
        for t, batch in enumerate(data):
            if not wrapped:
                factor = 1.0 if t <= start else (1 / (t - start + 1) if average == "mean" else 0.1)
                for group in base.param_groups:
                    group["lr"] = 1e-2 * factor
            opt.zero_grad()
            logits = model(batch[:, :-1])
            nn.functional.cross_entropy(logits.reshape(-1, 7), batch[:, 1:].reshape(-1)).backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    wrapped, bare = run(True), run(False)
    assert _max_diff(wrapped, bare) < 1e-10
    torch.manual_seed(0)
    initial = list(GPT(vocab=7, context=5, layers=1, heads=2, width=8).double().parameters())
    assert _max_diff(wrapped, initial) > 1e-3  # it trained
