"""Eligibility-trace weights of GRPO-λ (Eq. 2, §3.2; matrix forms Eq. 17–18, Appendix A.3).

Notation. Completion positions are counted from the first completion token, t = 0, 1, …, T−1. The trace weight
that the current token t gives an earlier token k = t − l (lag l ≥ 0) is, with decay a = γλ and floor ε,

    recent:  tr(t, l) = max(ε, a^l)                                   (Eq. 18)
    both:    tr(t, l) = max(ε, a^l, a^(t−l)) = max(ε, a^min(l, t−l))  (Eq. 2, Eq. 17)

and tr(t, 0) = 1 (the diagonal; a^0 = 1 ≥ ε because ε ∈ [0, 1]). `both` gives the first completion token
(k = 0) weight a^0 = 1 at every t, so it is not plain GRPO even at λ = 0.

Two forms live here:

- `trace_matrix`: the dense [T, T] float64 matrix of Eq. 17–18, the obvious reference.
- `traced_sum`: S_t = Σ_{k ≤ t, mask_k} tr(t, t − k) · v_k for a batch, in O(B·T) memory, from three one-pass
  quantities (see `traced_sum` for the derivation). No T×T matrix and no a^(−t) factors, so it neither runs out
  of memory nor overflows on long completions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

TraceStyle = Literal["recent", "both"]
TRACE_STYLES: tuple[str, ...] = ("recent", "both")


def trace_decay(gamma: float, lam: float) -> float:
    """The per-token decay a = γλ of the traces (Theorem 1, Eq. 1), with γ ∈ (0, 1] and λ ∈ [0, 1]."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"trace_lambda must lie in [0, 1], got {lam}.")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"trace_gamma must lie in (0, 1], got {gamma}.")
    return gamma * lam


def _check_style_and_floor(style: str, floor: float) -> None:
    if style not in TRACE_STYLES:
        raise ValueError(f"trace style must be one of {TRACE_STYLES}, got {style!r}.")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"trace_floor must lie in [0, 1], got {floor}.")


def trace_matrix(length: int, gamma: float, lam: float, style: TraceStyle, floor: float = 0.0) -> torch.Tensor:
    """Dense trace matrix of Eq. 17 (`both`) / Eq. 18 (`recent`), the reference form.

    Args:
        length: number of completion positions T.
        gamma, lam: discount γ and trace parameter λ; the decay is a = γλ.
        style: "recent" or "both".
        floor: ε, the smallest off-diagonal weight inside the lower triangle.

    Returns:
        float64 tensor [T, T], lower-triangular; entry [t, k] = tr(t, t − k) for k ≤ t (row t = current token,
        column k = earlier token), 1 on the diagonal, 0 above it.
    """
    decay = trace_decay(gamma, lam)
    _check_style_and_floor(style, floor)
    t = torch.arange(length, dtype=torch.float64)[:, None]  # [T, 1]
    k = torch.arange(length, dtype=torch.float64)[None, :]  # [1, T]
    lag = (t - k).clamp(min=0)
    base = torch.tensor(decay, dtype=torch.float64)
    weights = torch.pow(base, lag)  # a^l; torch gives 0^0 = 1
    if style == "both":
        weights = torch.maximum(weights, torch.pow(base, k).expand_as(weights))  # a^(t−l) = a^k
    weights = weights.clamp(min=floor)
    weights.fill_diagonal_(1.0)
    return torch.tril(weights)


def _exponential_horizon(decay: float, floor: float, length: int) -> int:
    """L*: the number of lags whose weight is a^l rather than the floor, so that max(ε, a^l) = a^l for l < L* and
    = ε for l ≥ L*. Capped at length + 1 (no lag reaches the floor)."""
    never = length + 1
    if floor <= 0.0 or decay >= 1.0:
        return never
    if decay <= 0.0:
        return 1
    horizon = max(0, math.ceil(math.log(floor) / math.log(decay)))
    while horizon > 0 and decay ** (horizon - 1) < floor:  # guard the rounding of the logarithms
        horizon -= 1
    while decay**horizon >= floor:
        horizon += 1
    return min(horizon, never)


def _decay_matrix(size: int, decay: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[size, size] lower-triangular block with entry [i, j] = a^(i−j): one chunk of the scan."""
    i = torch.arange(size, device=device, dtype=dtype)
    lag = i[:, None] - i[None, :]
    return torch.tril(torch.pow(torch.tensor(decay, dtype=dtype, device=device), lag.clamp(min=0)))


def discounted_cumsum(values: torch.Tensor, decay: float, chunk_size: int = 64) -> torch.Tensor:
    """E_t = Σ_{k ≤ t} a^(t−k) v_k along the last dim: the recursion ε_t = a·ε_{t−1} + v_t of Eq. 14–15.

    A chunked scan: within chunks of `chunk_size` positions a [C, C] block does the sum; the chunk ends form a
    shorter sequence with decay a^C, scanned the same way. Memory O(B·T + C²); only non-negative powers of a.

    Args:
        values: [..., T] tensor.
        decay: a ∈ [0, 1].
    Returns:
        [..., T] tensor, same dtype as `values`.
    """
    length = values.shape[-1]
    if length <= chunk_size:
        return values @ _decay_matrix(length, decay, values.dtype, values.device).T
    n_chunks = -(-length // chunk_size)
    padded = torch.nn.functional.pad(values, (0, n_chunks * chunk_size - length))
    chunks = padded.unflatten(-1, (n_chunks, chunk_size))  # [..., n, C]
    local = chunks @ _decay_matrix(chunk_size, decay, values.dtype, values.device).T  # [..., n, C]
    chunk_totals = discounted_cumsum(local[..., -1], decay**chunk_size, chunk_size)  # E at each chunk's end
    carried = torch.nn.functional.pad(chunk_totals[..., :-1], (1, 0))  # E at the previous chunk's end
    carry_decay = torch.pow(
        torch.tensor(decay, dtype=values.dtype, device=values.device),
        torch.arange(1, chunk_size + 1, dtype=values.dtype, device=values.device),
    )
    out = local + carried[..., None] * carry_decay
    return out.flatten(-2)[..., :length]


def traced_sum(
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    style: TraceStyle,
    floor: float = 0.0,
) -> torch.Tensor:
    """S_t = Σ_{k ≤ t, mask_k} tr(t, t − k) · v_k, i.e. `values` times the trace matrix of Eq. 17–18, row-wise.

    Derivation. Write w(j) = max(ε, a^j), non-increasing in j, so w(j) = a^j for j < L* and ε for j ≥ L*. Then
    `recent` is S_t = Σ_{j ≤ t} w(j) v_{t−j} and `both` is S_t = Σ_{k ≤ t} w(min(k, t − k)) v_k. With the
    running sums C_t = Σ_{k ≤ t} v_k and E_t = Σ_{k ≤ t} a^(t−k) v_k (C_{−1} = E_{−1} = 0), a window of the n most
    recent tokens is

        U(t, n) = Σ_{j < n} w(j) v_{t−j} = ε·(C_{t−n'} − C_{t−n}) + E_t − a^n'·E_{t−n'},   n' = min(n, L*),

    so recent: S_t = U(t, t + 1); both: split at h = ⌊t/2⌋ (k ≤ h has min(k, t−k) = k),
    S_t = Σ_{k ≤ h} w(k) v_k + U(t, t − h). Every term is O(B·T); sums are taken in float64.

    Masked tokens (mask_k = 0) carry no weight and receive no gradient. Masked positions t still get the sum of
    the formula; callers mask the result as they mask any per-token quantity.

    Args:
        values: [B, T] per-token values v_k (e.g. log πθ − log πold), position 0 = first completion token.
        mask: [B, T] 1 for real completion tokens, 0 for padding.
        gamma, lam: γ and λ (a = γλ).
        style: "recent" or "both".
        floor: ε ∈ [0, 1].

    Returns:
        [B, T] tensor in the dtype of `values`.
    """
    decay = trace_decay(gamma, lam)
    _check_style_and_floor(style, floor)
    length = values.shape[-1]
    device = values.device
    v = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=device)).to(torch.float64)

    zero = torch.zeros((*v.shape[:-1], 1), dtype=torch.float64, device=device)
    cumsum = torch.cat([zero, v.cumsum(-1)], dim=-1)  # [B, T+1]; index j+1 holds C_j
    discounted = torch.cat([zero, discounted_cumsum(v, decay)], dim=-1)  # index j+1 holds E_j

    t = torch.arange(length, device=device)
    half = torch.div(t, 2, rounding_mode="floor")
    window = t + 1 if style == "recent" else t - half
    horizon = _exponential_horizon(decay, floor, length)
    window_exp = window.clamp(max=horizon)

    def at(running: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return running.index_select(-1, index + 1)

    base = torch.tensor(decay, dtype=torch.float64, device=device)
    total = at(discounted, t) - torch.pow(base, window_exp.to(torch.float64)) * at(discounted, t - window_exp)
    if floor > 0.0:
        total = total + floor * (at(cumsum, t - window_exp) - at(cumsum, t - window))
    if style == "both":
        early_weights = torch.pow(base, t.to(torch.float64)).clamp(min=floor)  # w(k)
        early = torch.cat([zero, (v * early_weights).cumsum(-1)], dim=-1)
        total = total + at(early, half)
    return total.to(values.dtype)
