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
"""

from __future__ import annotations

from typing import Literal

import torch

from .traces import TraceStyle, traced_sum

WeightClampFn = Literal["sigmoid", "tanh"]
WEIGHT_CLAMP_FNS: tuple[str, ...] = ("sigmoid", "tanh")


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


def eligibility_trace_log_ratio(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    style: TraceStyle,
    floor: float = 0.0,
) -> torch.Tensor:
    """The exponent of the ε-trace ratio (Eq. 1; Eq. 2 for general tr):

        log π^GAE_ratio(s_t) = Σ_{l=0}^{t} tr(t, l)·[log πθ(a_{t−l}|s_{t−l}) − log πold(a_{t−l}|s_{t−l})]

    Gradients flow into `per_token_logps` (Theorem 1); `old_per_token_logps` is a constant.

    Args:
        per_token_logps: [B, T] log πθ of the completion tokens.
        old_per_token_logps: [B, T] log πold of the same tokens.
        mask: [B, T] completion mask.
    Returns:
        [B, T] traced log-ratio.
    """
    log_ratio = per_token_logps - old_per_token_logps.detach()
    return traced_sum(log_ratio, mask, gamma, lam, style, floor)


def soft_clamp_log_probs(per_token_logps: torch.Tensor, fn: WeightClampFn = "sigmoid") -> torch.Tensor:
    """f(log π) of Alg. 2: 1 + σ(log π − 1) (the paper's choice), or 1 + tanh(log π − 1) (its stated alternative).

    For log π ≤ 0, sigmoid gives values in (1, 1 + σ(−1)] ≈ (1, 1.269] and tanh in (0, 1 − tanh(1)] ≈ (0, 0.238]
    (0 in floating point for very unlikely tokens). Non-negative weights keep ε-weight a weighting of GRPO's
    clipped term: w·(−min(rA, clip(r)A)) = −min(r·Aw, clip(r)·Aw) for w ≥ 0.
    """
    if fn == "sigmoid":
        return 1.0 + torch.sigmoid(per_token_logps - 1.0)
    if fn == "tanh":
        return 1.0 + torch.tanh(per_token_logps - 1.0)
    raise ValueError(f"weight_clamp_fn must be one of {WEIGHT_CLAMP_FNS}, got {fn!r}.")


@torch.no_grad()
def eps_weight_trace_weights(
    per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    style: TraceStyle,
    floor: float = 0.0,
    fn: WeightClampFn = "sigmoid",
) -> torch.Tensor:
    """ε^w = w @ f(log π) of Alg. 2: ε^w_t = Σ_{l=0}^{t} tr(t, l)·f(log π(a_{t−l}|s_{t−l})), a constant coefficient.

    Args:
        per_token_logps: [B, T] log-probabilities of the sampled tokens under the policy that generated them.
        mask: [B, T] completion mask; padded tokens add nothing.
    Returns:
        [B, T] non-negative weights (no gradient); ≥ 1 with the sigmoid clamp.
    """
    return traced_sum(soft_clamp_log_probs(per_token_logps, fn), mask, gamma, lam, style, floor)


def credit_weights(
    mask: torch.Tensor, gamma: float, lam: float, style: TraceStyle, floor: float = 0.0
) -> torch.Tensor:
    """Forward view of the traces: c_k = Σ_{t ≥ k, mask_t} tr(t, t − k) for each real token k.

    On-policy, ε-trace's gradient is GRPO's with token k's advantage multiplied by c_k (regroup Theorem 1's double
    sum by the earlier token); c_k = 1 for λ = 0 with `recent`. Computed as the gradient of Σ_t mask_t·S_t with
    respect to v = 1, so it reuses `traced_sum` and never builds the matrix.

    Args:
        mask: [B, T] completion mask.
    Returns:
        [B, T] float64 weights, 0 on masked tokens.
    """
    with torch.enable_grad():
        ones = torch.ones(mask.shape, dtype=torch.float64, device=mask.device, requires_grad=True)
        total = (traced_sum(ones, mask, gamma, lam, style, floor) * mask.to(torch.float64)).sum()
        (weights,) = torch.autograd.grad(total, ones)
    return weights
