"""The per-token pieces of Alg. 1–2 against dense references and their limits."""

import pytest
import torch

from grpo_lambda.loss import (
    clamp_negative_advantages,
    eligibility_traced_log_probs,
    eps_weight_trace_weights,
    on_policy_traced_log_probs,
    soft_clamp_log_probs,
)
from grpo_lambda.traces import TraceSpec, credit_weights
from helpers import dense_adjoint, dense_traced_sum, right_padded_mask


def test_advantage_clamp():
    advantages = torch.tensor([-2.0, -0.1, -0.05, 0.0, 1.5])
    assert clamp_negative_advantages(advantages, -0.1).tolist() == pytest.approx([-0.1, -0.1, -0.05, 0.0, 1.5])
    assert clamp_negative_advantages(advantages, None) is advantages


def test_soft_clamp_values_and_range():
    logps = torch.tensor([0.0, -1.0, -50.0])
    sigmoid = soft_clamp_log_probs(logps, "sigmoid")
    assert sigmoid.tolist() == pytest.approx([1 + 1 / (1 + torch.e), 1.0 + 1 / (1 + torch.e**2), 1.0], abs=1e-6)
    tanh = soft_clamp_log_probs(logps, "tanh")
    assert (tanh >= 0).all() and tanh[0].item() == pytest.approx(1 + torch.tanh(torch.tensor(-1.0)).item())
    with pytest.raises(ValueError, match="weight_clamp_fn"):
        soft_clamp_log_probs(logps, "relu")


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
@pytest.mark.parametrize("style", ["recent", "both"])
def test_eps_weight_weights_are_trace_matrix_times_soft_clamp(style, fn):
    generator = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 30, dtype=torch.float64, generator=generator) * 5
    mask = (torch.rand(3, 30, generator=generator) > 0.2).double()
    trace = TraceSpec(1.0, 0.99, style, 0.01)
    expected = dense_traced_sum(soft_clamp_log_probs(logps, fn), mask, trace)
    weights = eps_weight_trace_weights(logps.clone().requires_grad_(), mask, trace, fn)
    torch.testing.assert_close(weights, expected)
    assert not weights.requires_grad and (weights[mask.bool()] >= (1 if fn == "sigmoid" else 0)).all()


def test_credit_weights_closed_form_for_recent():
    # Σ_{t=k}^{L−1} a^(t−k) = (1 − a^(L−k)) / (1 − a) for a completion of length L.
    length, a = 50, 0.99
    weights = credit_weights(torch.ones(1, length), TraceSpec(1.0, a, "recent"))[0]
    k = torch.arange(length, dtype=torch.float64)
    torch.testing.assert_close(weights, (1 - a ** (length - k)) / (1 - a))


@pytest.mark.parametrize("fn", ["sigmoid", "tanh"])
def test_soft_clamp_with_and_without_gradient(fn):
    """Without autograd the clamp works in place on one temporary; with it, the gradient is f'(log π)."""
    logps = -4 * torch.rand(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain = soft_clamp_log_probs(logps, fn)
    x = logps.clone().requires_grad_()
    tracked = soft_clamp_log_probs(x, fn)
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)
    tracked.sum().backward()
    s = torch.sigmoid(logps - 1.0)
    expected = s * (1 - s) if fn == "sigmoid" else 1 - torch.tanh(logps - 1.0) ** 2
    torch.testing.assert_close(x.grad, expected)
    assert torch.equal(logps, x.detach())  # the input is never modified


def test_traced_log_ratio_is_zero_on_policy_but_not_its_gradient():
    logps = torch.randn(2, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    mask = torch.ones(2, 10, dtype=torch.float64)
    traced = eligibility_traced_log_probs(logps, logps.detach(), mask, TraceSpec(1.0, 0.5, "recent")) - logps.detach()
    assert torch.equal(traced, torch.zeros_like(traced))
    traced[:, -1].sum().backward()
    expected = 0.5 ** torch.arange(9, -1, -1, dtype=torch.float64)  # ∂Λ_9/∂log π_k = a^(9−k)
    torch.testing.assert_close(logps.grad, expected.expand(2, 10))


@pytest.mark.parametrize(
    "trace",
    [
        TraceSpec(1.0, 0.99, "recent"),
        TraceSpec(0.95, 0.98, "both", 0.01),
        TraceSpec(1.0, 0.0, "both"),
        TraceSpec(1.0, 1.0, "recent", 0.0),
    ],
    ids=lambda trace: f"{trace.style}-l{trace.lam:g}-f{trace.floor:g}",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_on_policy_form_has_the_traced_value_and_gradient(trace, dtype):
    """With πold = πθ and the same loss gradient at each real token of a row (here −A_i/L_i, TRL's `grpo`),
    sg(log π) + c·(log π − sg(log π)) gives the traced sum's value and gradient (Theorem 1's forward view)."""
    generator = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 50, dtype=torch.float64, generator=generator) * 4).to(dtype)
    lengths = torch.tensor([50, 31, 1])
    mask = right_padded_mask(lengths, 50).to(dtype)
    advantages = torch.tensor([[1.3], [-0.4], [0.7]], dtype=dtype)

    def loss_and_grad(traced_fn):
        x = logps.clone().requires_grad_()
        traced = traced_fn(x)
        ratio = torch.exp(traced - x.detach())
        per_token = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)
        loss = ((per_token * mask).sum(-1) / lengths).mean()
        loss.backward()
        return traced.detach(), loss.detach(), x.grad

    general = loss_and_grad(lambda x: eligibility_traced_log_probs(x, x.detach(), mask, trace))
    fast = loss_and_grad(lambda x: on_policy_traced_log_probs(x, mask, trace))
    assert torch.equal(fast[0], logps) and torch.equal(general[0], logps) and torch.equal(fast[1], general[1])
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast[2], general[2], **tol)
    # and both are GRPO's gradient with token k's advantage scaled by c_k = Σ_{t ≥ k, mask_t} tr(t, t − k)
    per_token_grad = -(advantages / lengths[:, None]) * mask / 3
    expected = dense_adjoint(per_token_grad, mask, trace)
    torch.testing.assert_close(fast[2].double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-9)
