"""Post-hoc weights (rbwa.averaging.weights): WSM and the power-function EMA against the runs they stand for."""

import numpy as np
import pytest
import torch

from rbwa.averaging.weights import combine, decay_sequence, lawa_weights, power_weights, sigma_rel, wsm_weights


def linear_loss_run(lr_factors: list[float], coefficients: torch.Tensor, start: torch.Tensor) -> list[torch.Tensor]:
    """Plain SGD (lr 0.1) on the loss a_t . theta, whose gradient a_t does not depend on the weights; the weights
    after every step (index 0: the start)."""
    theta = torch.nn.Parameter(start.clone())
    opt = torch.optim.SGD([theta], lr=0.1)
    out = [theta.detach().clone()]
    for a, factor in zip(coefficients, lr_factors, strict=True):
        opt.param_groups[0]["lr"] = 0.1 * factor
        opt.zero_grad()
        (a * theta).sum().backward()
        opt.step()
        out.append(theta.detach().clone())
    return out


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("m", [1, 3])
def test_wsm_of_a_constant_lr_run_is_the_run_with_that_decay_where_gradients_do_not_depend_on_the_weights(shape, m):
    """Checkpoints every m steps of 8 intervals; WSM over the last k = 5 intervals equals the run whose learning rate
    is multiplied by the decay's w_i over interval i (constant within it), exactly in float64."""
    g = torch.Generator().manual_seed(0)
    intervals, k = 8, 5
    coefficients = torch.randn(intervals * m, 4, generator=g, dtype=torch.float64)
    start = torch.randn(4, generator=g, dtype=torch.float64)
    constant = linear_loss_run([1.0] * (intervals * m), coefficients, start)
    checkpoints = [{"theta": constant[j * m]} for j in range(intervals + 1)]  # the start, then every m steps
    w = decay_sequence(shape, k)
    factors = [1.0] * ((intervals - k) * m) + [float(x) for x in np.repeat(w, m)]
    decayed = linear_loss_run(factors, coefficients, start)[-1]
    merged = combine(checkpoints.__getitem__, wsm_weights(len(checkpoints), k, shape))["theta"]
    torch.testing.assert_close(merged, decayed, rtol=0, atol=1e-12)
    assert not torch.allclose(merged, constant[-1])  # the decay moved it: the identity is not a triviality


def test_wsm_coefficients_by_hand():
    # cosine over 3 updates: w = 1, 0.75, 0.25 -> 1 - 1, 1 - 0.75, 0.75 - 0.25, 0.25
    np.testing.assert_allclose(wsm_weights(5, 3, "cosine"), [0, 0, 0.25, 0.5, 0.25], atol=1e-15)
    # a linear decay is the uniform mean of the last k checkpoints (LAWA over them)
    np.testing.assert_allclose(wsm_weights(7, 4, "linear"), lawa_weights(list(range(7)), 7, 4), atol=1e-15)
    np.testing.assert_allclose(decay_sequence("1-sqrt", 4), [1, 0.5, 1 - 0.5 ** 0.5, 1 - 0.75 ** 0.5])
    with pytest.raises(ValueError, match="needs k \\+ 1 checkpoints"):
        wsm_weights(4, 4, "linear")
    with pytest.raises(ValueError, match="decay shape must be one of linear, cosine, 1-sqrt"):
        decay_sequence("step", 3)


def test_the_power_ema_by_hand_and_against_edm2s_online_update():
    # gamma 1 over steps 1..4: (tau^2 - (tau - 1)^2) / 16
    np.testing.assert_allclose(power_weights([1, 2, 3, 4], 1.0), [1 / 16, 3 / 16, 5 / 16, 7 / 16])
    g = torch.Generator().manual_seed(0)
    trajectory = torch.randn(50, 3, generator=g, dtype=torch.float64)  # the weights after steps 1..50
    for gamma in (0.5, 6.94, 16.97):
        online = trajectory[0].clone()
        for t in range(2, 51):  # beta_1 = 0: the first step is taken as it is
            beta = (1 - 1 / t) ** (gamma + 1)
            online = beta * online + (1 - beta) * trajectory[t - 1]
        w = power_weights(list(range(1, 51)), gamma)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(torch.from_numpy(w) @ trajectory, online, rtol=0, atol=1e-12)


def test_a_coarse_power_ema_is_exact_where_the_weights_stay_put_between_snapshots():
    g = torch.Generator().manual_seed(1)
    blocks, m, gamma = torch.randn(6, 2, generator=g, dtype=torch.float64), 4, 3.0
    every_step = power_weights(list(range(1, 6 * m + 1)), gamma) @ blocks.repeat_interleave(m, dim=0).numpy()
    coarse = power_weights([m * (j + 1) for j in range(6)], gamma) @ blocks.numpy()
    np.testing.assert_allclose(coarse, every_step, rtol=0, atol=1e-12)
    assert sigma_rel(6.94) == pytest.approx(0.10, abs=1e-3) and sigma_rel(16.97) == pytest.approx(0.05, abs=1e-3)
