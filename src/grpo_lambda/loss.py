"""The per-token pieces of the GRPO-λ objective (§3, Alg. 1–2 in Appendix A.3), as pure torch functions.

How GRPO-λ departs from plain GRPO (λ = 0, `recent`, no clamp gives plain GRPO back):

1. Advantages below a small negative bound are raised to it, Â = max(A_NAE, −0.1) (Alg. 1–2, first line).
2. ε-trace (Alg. 1): the importance ratio of token t is exp(Σ_l tr(t, l)·[log πθ − log πold](a_{t−l})) (Eq. 1–2)
   instead of exp(log πθ − log πold)(a_t); it is clipped to 1 ± ε exactly as GRPO clips its ratio. On-policy its
   value is 1 but its gradient is the eligibility trace Σ_l tr(t, l)·∇log πθ(a_{t−l}) of Theorem 1.
3. ε-weight (Alg. 2): the ratio stays GRPO's; the clipped per-token term is multiplied by the trace of the
   soft-clamped log-probabilities, ε^w_t = Σ_l tr(t, l)·f(log π(a_{t−l})), f(x) = 1 + σ(x − 1). ε^w is a
   coefficient (no gradient flows through it); docs/method.md explains that reading.

The KL term (β·k3 against the reference model) and the reduction over tokens are GRPO's, untouched.

On-policy (πold = πθ in value) ε-trace has an exact elementwise form, `on_policy_traced_log_probs`, with the same
value and gradient as the general traced sum; docs/method.md says when the trainer uses it.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from .traces import TraceSpec, scale_by_credit_weights, traced_sum

WeightClampFn = Literal["sigmoid", "tanh"]
WEIGHT_CLAMP_FNS: tuple[str, ...] = get_args(WeightClampFn)


def clamp_negative_advantages(advantages: torch.Tensor, adv_clamp_min: float | None) -> torch.Tensor:
    """Â = max(A, adv_clamp_min) (Alg. 1 and 2, line 2: max(A_NAE, −0.1)); None leaves A unchanged.

    Args:
        advantages: [B] or [B, T] normalised advantages.
    Returns:
        tensor of the same shape.
    """
    if adv_clamp_min is None:
        return advantages
    return advantages.clamp(min=adv_clamp_min)


def eligibility_traced_log_probs(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor, trace: TraceSpec
) -> torch.Tensor:
    """ε-trace's traced log-probabilities, log πold plus the exponent of its ratio (Eq. 1; Eq. 2 for general tr):

        log π^λ_t = log πold(a_t|s_t) + Σ_{l=0}^{t} tr(t, l)·[log πθ(a_{t−l}|s_{t−l}) − log πold(a_{t−l}|s_{t−l})]

    so that exp(log π^λ − log πold) is the ε-trace ratio π^GAE_ratio. Gradients flow into `per_token_logps`
    (Theorem 1); `old_per_token_logps` is a constant.

    Args:
        per_token_logps: [B, T] log πθ of the completion tokens.
        old_per_token_logps: [B, T] log πold of the same tokens.
        mask: [B, T] completion mask.
        trace: the trace tr(t, l) (γ, λ, style, floor).
    Returns:
        [B, T] traced log-probabilities (the log-ratio is this minus `old_per_token_logps`).
    """
    return traced_sum(per_token_logps, mask, trace, offset=old_per_token_logps)


def soft_clamp_log_probs(per_token_logps: torch.Tensor, fn: WeightClampFn = "sigmoid") -> torch.Tensor:
    """f(log π) of Alg. 2: 1 + σ(log π − 1) (the paper's choice), or 1 + tanh(log π − 1) (its stated alternative).

    For log π ≤ 0, sigmoid gives values in (1, 1 + σ(−1)] ≈ (1, 1.269] and tanh in (0, 1 − tanh(1)] ≈ (0, 0.238]
    (0 in floating point for very unlikely tokens). Non-negative weights keep ε-weight a weighting of GRPO's
    clipped term: w·(−min(rA, clip(r)A)) = −min(r·Aw, clip(r)·Aw) for w ≥ 0.
    """
    if fn not in WEIGHT_CLAMP_FNS:
        raise ValueError(f"weight_clamp_fn must be one of {WEIGHT_CLAMP_FNS}, got {fn!r}.")
    shifted = per_token_logps - 1.0
    if shifted.requires_grad:  # out of place: sigmoid's backward needs its output unchanged
        return 1.0 + (torch.sigmoid(shifted) if fn == "sigmoid" else torch.tanh(shifted))
    return (shifted.sigmoid_() if fn == "sigmoid" else shifted.tanh_()).add_(1.0)  # one [B, T] tensor, not three


@torch.no_grad()
def eps_weight_trace_weights(
    per_token_logps: torch.Tensor, mask: torch.Tensor, trace: TraceSpec, fn: WeightClampFn = "sigmoid"
) -> torch.Tensor:
    """ε^w = w @ f(log π) of Alg. 2: ε^w_t = Σ_{l=0}^{t} tr(t, l)·f(log π(a_{t−l}|s_{t−l})), a constant coefficient.

    Args:
        per_token_logps: [B, T] log-probabilities of the sampled tokens under the policy that generated them.
        mask: [B, T] completion mask; padded tokens add nothing.
        trace: the trace tr(t, l).
        fn: the soft clamp f (`soft_clamp_log_probs`).
    Returns:
        [B, T] non-negative weights (no gradient); ≥ 1 with the sigmoid clamp.
    """
    return traced_sum(soft_clamp_log_probs(per_token_logps, fn), mask, trace)


def on_policy_traced_log_probs(per_token_logps: torch.Tensor, mask: torch.Tensor, trace: TraceSpec) -> torch.Tensor:
    """ε-trace's traced log-probabilities when πold = πθ in value (num_iterations = 1), in one elementwise pass:

        log π^λ_t = sg(log πθ_t) + c_t·(log πθ_t − sg(log πθ_t)),   c = credit_weights(mask)

    Its value is log πθ exactly, as is the general path's log πold + Σ_l tr(t, l)·0, so the ratio is exactly 1. Its
    gradient equals the general path's, token for token, when the loss's gradient g_t at every real token t of
    sequence i is the same γ_i (true on-policy: the ratio is 1 everywhere, so the clip is inactive and min picks the
    same branch; TRL's loss types weight tokens per sequence):

        general: ∂/∂log π_k = Σ_{t ≥ k} g_t·tr(t, t − k)·mask_k = γ_i·Σ_{t ≥ k, mask_t} tr(t, t − k) = γ_i·c_k
        here:    ∂/∂log π_k = g_k·c_k = γ_i·c_k

    i.e. Theorem 1 (Eq. 12) in its forward view: GRPO's gradient with token k's advantage scaled by c_k. The
    forward returns `per_token_logps` itself (a view) and c is computed in the backward from the mask, so the
    loss's forward holds no extra [B, T] tensor.

    Args:
        per_token_logps: [B, T] log πθ of the completion tokens (with gradient).
        mask: [B, T] completion mask.
        trace: the trace tr(t, l) (see `credit_weights`).
    Returns:
        [B, T] tensor equal to `per_token_logps` in value.
    """
    if not (per_token_logps.requires_grad and torch.is_grad_enabled()):
        return per_token_logps
    return _CreditScaledGradient.apply(per_token_logps, mask, trace)


class _CreditScaledGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by credit_weights(mask)."""

    @staticmethod
    def forward(ctx, per_token_logps, mask, trace):
        ctx.save_for_backward(mask)
        ctx.trace = trace
        return per_token_logps.view_as(per_token_logps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return scale_by_credit_weights(grad, mask, ctx.trace), None, None
