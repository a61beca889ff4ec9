"""Eligibility-trace weights of GRPO-λ (Eq. 2, §3.2; matrix forms Eq. 17–18, Appendix A.3).

Notation. Completion positions are counted from the first completion token, t = 0, 1, …, T−1. The trace weight
that the current token t gives an earlier token k = t − l (lag l ≥ 0) is, with decay a = γλ and floor ε,

    recent:  tr(t, l) = max(ε, a^l)                                   (Eq. 18)
    both:    tr(t, l) = max(ε, a^l, a^(t−l)) = max(ε, a^min(l, t−l))  (Eq. 2, Eq. 17)

and tr(t, 0) = 1 (the diagonal; a^0 = 1 ≥ ε because ε ∈ [0, 1]). `both` gives the first completion token
(k = 0) weight a^0 = 1 at every t, so it is not plain GRPO even at λ = 0. A `TraceSpec` holds (γ, λ, style, ε).

Four forms live here:

- `trace_matrix`: the dense [T, T] float64 matrix of Eq. 17–18, the obvious reference.
- `traced_sum`: S_t = Σ_{k ≤ t, mask_k} tr(t, t − k) · v_k for a batch, in O(B·T) memory, from three one-pass
  quantities (see `traced_sum` for the derivation). No T×T matrix and no a^(−t) factors, so it neither runs out
  of memory nor overflows on long completions. Its backward is `traced_sum_adjoint`, so autograd keeps only the
  mask, not the float64 intermediates of the scan.
- `traced_sum_adjoint`: G_k = mask_k Σ_{t ≥ k} tr(t, t − k) · g_t, the transpose (forward view of the traces),
  by the same windows run from the end of the sequence.
- `credit_weights`: c_k = Σ_{t ≥ k, mask_t} tr(t, t − k), the adjoint applied to the mask, in closed form when
  the mask is a prefix (TRL's right-padded completions) and by the adjoint otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .methods import TRACE_STYLES as TRACE_STYLES  # re-exported beside TraceSpec, which checks against it
from .methods import TraceStyle


@dataclass(frozen=True)
class TraceSpec:
    """The trace tr(t, l) of Eq. 2 / Eq. 17–18: discount γ ∈ (0, 1], trace parameter λ ∈ [0, 1], style and floor
    ε ∈ [0, 1]; validated when built (the messages name the config fields `trace_gamma`, `trace_lambda`, …)."""

    gamma: float
    lam: float
    style: TraceStyle
    floor: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"trace_lambda={self.lam} is outside [0, 1]; the paper uses 0.98 or 0.99.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"trace_gamma={self.gamma} is outside (0, 1]; use 1.0 for undiscounted traces.")
        if self.style not in TRACE_STYLES:
            raise ValueError(f"trace_style={self.style!r} is not one of {', '.join(TRACE_STYLES)}.")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"trace_floor={self.floor} is outside [0, 1]; use 0.0 to disable the floor.")

    @property
    def decay(self) -> float:
        """The per-token decay a = γλ of the traces (Theorem 1, Eq. 1)."""
        return self.gamma * self.lam

    def exponential_horizon(self, length: int) -> int:
        """L*: the number of lags whose weight is a^l rather than the floor, so that max(ε, a^l) = a^l for l < L*
        and = ε for l ≥ L*. Capped at length + 1 (no lag reaches the floor)."""
        decay, floor, never = self.decay, self.floor, length + 1
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


def trace_matrix(length: int, trace: TraceSpec, device: torch.device | str | None = None) -> torch.Tensor:
    """Dense trace matrix of Eq. 17 (`both`) / Eq. 18 (`recent`), the reference form.

    Args:
        length: number of completion positions T.
        trace: γ, λ (decay a = γλ), style and floor ε (the smallest off-diagonal weight inside the lower triangle).
        device: where to build it (default: torch's default device).

    Returns:
        float64 tensor [T, T], lower-triangular; entry [t, k] = tr(t, t − k) for k ≤ t (row t = current token,
        column k = earlier token), 1 on the diagonal, 0 above it.
    """
    t = torch.arange(length, dtype=torch.float64, device=device)[:, None]  # [T, 1]
    k = torch.arange(length, dtype=torch.float64, device=device)[None, :]  # [1, T]
    lag = (t - k).clamp(min=0)
    base = torch.tensor(trace.decay, dtype=torch.float64, device=device)
    weights = torch.pow(base, lag)  # a^l; torch gives 0^0 = 1
    if trace.style == "both":
        weights = torch.maximum(weights, torch.pow(base, k).expand_as(weights))  # a^(t−l) = a^k
    weights = weights.clamp(min=trace.floor)
    weights.fill_diagonal_(1.0)
    return torch.tril(weights)


def _decay_matrix(size: int, decay: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[size, size] lower-triangular block with entry [i, j] = a^(i−j): one chunk of the scan."""
    i = torch.arange(size, device=device, dtype=dtype)
    lag = i[:, None] - i[None, :]
    return torch.tril(torch.pow(torch.tensor(decay, dtype=dtype, device=device), lag.clamp(min=0)))


def discounted_cumsum(values: torch.Tensor, decay: float, chunk_size: int = 32) -> torch.Tensor:
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
    values: torch.Tensor, mask: torch.Tensor, trace: TraceSpec, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """S_t = Σ_{k ≤ t, mask_k} tr(t, t − k) · v_k, i.e. `values` times the trace matrix of Eq. 17–18, row-wise.

    Derivation. Write w(j) = max(ε, a^j), non-increasing in j, so w(j) = a^j for j < L* and ε for j ≥ L*. Then
    `recent` is S_t = Σ_{j ≤ t} w(j) v_{t−j} and `both` is S_t = Σ_{k ≤ t} w(min(k, t − k)) v_k. With the
    running sums C_t = Σ_{k ≤ t} v_k and E_t = Σ_{k ≤ t} a^(t−k) v_k (C_{−1} = E_{−1} = 0), a window of the n most
    recent tokens is

        U(t, n) = Σ_{j < n} w(j) v_{t−j} = ε·(C_{t−n'} − C_{t−n}) + E_t − a^n'·E_{t−n'},   n' = min(n, L*),

    so recent: S_t = U(t, t + 1); both: split at h = ⌊t/2⌋ (k ≤ h has min(k, t−k) = k),
    S_t = Σ_{k ≤ h} w(k) v_k + U(t, t − h). Every term is O(B·T); sums are taken in float64.

    The gradient is `traced_sum_adjoint` of the incoming gradient (the map is linear in v), so the graph stores
    the mask only: O(B·T) memory in the backward pass too.

    Masked tokens (mask_k = 0) carry no weight and receive no gradient. Masked positions t still get the sum of
    the formula; callers mask the result as they mask any per-token quantity.

    Args:
        values: [B, T] per-token values v_k (e.g. log πθ − log πold), position 0 = first completion token.
        mask: [B, T] 1 for real completion tokens, 0 for padding.
        trace: γ, λ (a = γλ), style and floor ε.
        offset: if given, a constant [B, T] tensor b, and the result is b + S(values − b) (ε-trace's traced
            log-probabilities log πold + Σ_l tr(t, l)·(log πθ − log πold), Eq. 1, with b = log πold), in one
            autograd node (its backward is the adjoint alone). No gradient flows into b.

    Returns:
        [B, T] tensor in the dtype of `values` (with `offset`: of values − offset).
    """
    if values.requires_grad and torch.is_grad_enabled():
        return _TracedSum.apply(values, mask, trace, offset)
    return _traced_sum(values, mask, trace, offset)


def _traced_sum(
    values: torch.Tensor, mask: torch.Tensor, trace: TraceSpec, offset: torch.Tensor | None = None
) -> torch.Tensor:
    if offset is not None:  # the result is a new tensor: the sum can go in place
        offset = offset.detach()
        return _traced_sum(values - offset, mask, trace).add_(offset)
    length, device = values.shape[-1], values.device
    decay, style, floor = trace.decay, trace.style, trace.floor
    v = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=device)).to(torch.float64)

    discounted = discounted_cumsum(v, decay)  # E_t
    zero = torch.zeros((*v.shape[:-1], 1), dtype=torch.float64, device=device)

    t = torch.arange(length, device=device)
    half = torch.div(t, 2, rounding_mode="floor")
    window = t + 1 if style == "recent" else t - half
    horizon = trace.exponential_horizon(length)
    window_exp = window.clamp(max=horizon)

    def at(running: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # running[..., index], index ≥ 0
        return torch.gather(running, -1, index.expand(*running.shape[:-1], -1))  # faster than index_select

    base = torch.tensor(decay, dtype=torch.float64, device=device)
    if style == "recent":  # E_{t−n'} with n' = min(t + 1, L*): E shifted right by L*, 0 before (no floor: all 0)
        total = discounted
        if horizon < length:
            shifted = torch.nn.functional.pad(discounted, (horizon, 0))[..., :length]
            total = total - torch.pow(base, window_exp.to(torch.float64)) * shifted
    else:  # t − n' ≥ ⌊t/2⌋ ≥ 0
        total = discounted - torch.pow(base, window_exp.to(torch.float64)) * at(discounted, t - window_exp)
    if floor > 0.0:
        cumsum = torch.cat([zero, v.cumsum(-1)], dim=-1)  # [B, T+1]; index j+1 holds C_j
        total = total + floor * (at(cumsum, t - window_exp + 1) - at(cumsum, t - window + 1))
    if style == "both":
        early_weights = torch.pow(base, t.to(torch.float64)).clamp(min=floor)  # w(k)
        total = total + at((v * early_weights).cumsum(-1), half)
    return total.to(values.dtype)


class _TracedSum(torch.autograd.Function):
    """`traced_sum` with its adjoint as the backward: linear in v, so only the mask is saved."""

    @staticmethod
    def forward(ctx, values, mask, trace, offset):
        ctx.save_for_backward(mask)
        ctx.trace = trace
        return _traced_sum(values, mask, trace, offset)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return traced_sum_adjoint(grad, mask, ctx.trace), None, None, None


def traced_sum_adjoint(grad: torch.Tensor, mask: torch.Tensor, trace: TraceSpec) -> torch.Tensor:
    """G_k = mask_k · Σ_{t ≥ k} tr(t, t − k) · g_t: the transpose of `traced_sum`, i.e. ∂(Σ_t g_t S_t)/∂v_k.

    This is the forward view of the traces (Theorem 1 regrouped by the earlier token, Eq. 12): how much token k
    is credited by the tokens after it. Derivation, with w(j) = max(ε, a^j) as in `traced_sum` and the reverse
    running sums C^r_k = Σ_{t ≥ k} g_t, E^r_k = Σ_{t ≥ k} a^(t−k) g_t (both 0 for k ≥ T): a window of the n tokens
    from k on is

        V(k, n) = Σ_{j < n} w(j) g_{k+j} = E^r_k − a^n'·E^r_{k+n'} + ε·(C^r_{k+n'} − C^r_{k+n}),   n' = min(n, L*).

    recent (tr depends on the lag t − k only): G_k = V(k, T − k). both: for t ≤ 2k the exponent min(t − k, k) is
    the lag, beyond it is k, so G_k = V(k, k + 1) + w(k)·C^r_{2k+1}. O(B·T), summed in float64.

    Args:
        grad: [B, T] per-token values g_t (the gradient arriving at S_t).
        mask: [B, T] completion mask (of the tokens k that receive the result).
        trace: as in `traced_sum`.
    Returns:
        [B, T] tensor in the dtype of `grad`, 0 where mask is 0.
    """
    length, device = grad.shape[-1], grad.device
    decay, style, floor = trace.decay, trace.style, trace.floor
    g = grad.to(torch.float64).flip(-1)
    zero = torch.zeros((*g.shape[:-1], 1), dtype=torch.float64, device=device)
    discounted = discounted_cumsum(g, decay).flip(-1)  # index k holds E^r_k

    k = torch.arange(length, device=device)
    window = length - k if style == "recent" else torch.minimum(k + 1, length - k)
    horizon = trace.exponential_horizon(length)
    window_exp = window.clamp(max=horizon)

    def at(running: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # running[..., index], 0 from index T on
        padded = torch.cat([running, zero], dim=-1)
        return torch.gather(padded, -1, index.clamp(max=length).expand(*running.shape[:-1], -1))

    base = torch.tensor(decay, dtype=torch.float64, device=device)
    if style == "recent":  # E^r_{k+n'} with k + n' = min(k + L*, T): E^r shifted left by L* (no floor: all 0)
        total = discounted
        if horizon < length:
            shifted = torch.nn.functional.pad(discounted, (0, horizon))[..., horizon:]
            total = total - torch.pow(base, window_exp.to(torch.float64)) * shifted
    else:
        total = discounted - torch.pow(base, window_exp.to(torch.float64)) * at(discounted, k + window_exp)
    if floor > 0.0 or style == "both":
        cumsum = torch.cat([zero, g.cumsum(-1)], dim=-1).flip(-1)[..., :length]  # index k holds C^r_k
    if floor > 0.0:
        total = total + floor * (at(cumsum, k + window_exp) - at(cumsum, k + window))
    if style == "both":
        early_weights = torch.pow(base, k.to(torch.float64)).clamp(min=floor)  # w(k)
        total = total + early_weights * at(cumsum, 2 * k + 1)
    total = torch.where(mask.bool(), total, torch.zeros((), dtype=torch.float64, device=device))
    return total.to(grad.dtype)


def _window_sums(length: int, trace: TraceSpec, device: torch.device) -> torch.Tensor:
    """W(n) = Σ_{j < n} max(ε, a^j) for n = 0 … T: (1 − a^n')/(1 − a) + ε·(n − n'), n' = min(n, L*). [T + 1] float64."""
    decay, floor = trace.decay, trace.floor
    n = torch.arange(length + 1, dtype=torch.float64, device=device)
    n_exp = n.clamp(max=trace.exponential_horizon(length))
    if decay >= 1.0:
        geometric = n_exp
    else:
        geometric = (1.0 - torch.pow(torch.tensor(decay, dtype=torch.float64, device=device), n_exp)) / (1.0 - decay)
    return geometric + floor * (n - n_exp) if floor > 0.0 else geometric


def credit_weights(mask: torch.Tensor, trace: TraceSpec, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Forward view of the traces: c_k = Σ_{t ≥ k, mask_t} tr(t, t − k) for each real token k (Theorem 1, Eq. 12).

    On-policy, ε-trace's gradient is GRPO's with token k's advantage multiplied by c_k (regroup Theorem 1's double
    sum by the earlier token); c_k = 1 for λ = 0 with `recent`. It is `traced_sum_adjoint(mask, mask)`.

    Closed form when each row of the mask is a prefix of L ones (TRL's right-padded completions), with
    W(n) = Σ_{j < n} max(ε, a^j) = (1 − a^n')/(1 − a) + ε·(n − n'), n' = min(n, L*):

        recent: c_k = W(L − k)
        both:   c_k = W(min(k + 1, L − k)) + max(ε, a^k)·max(0, L − 1 − 2k)

    (`both`: the tokens t ≤ 2k weigh k by the lag t − k, the L − 1 − 2k tokens after them by a^k.) W is a table
    of T + 1 float64 numbers, so the [B, T] work is integer arithmetic and a gather. Other masks go through the
    adjoint scan; both are exact.

    Args:
        mask: [B, T] completion mask.
        trace: γ, λ, style and floor ε.
        dtype: of the result; the table and the scan are float64 and rounded once at the end.
    Returns:
        [B, T] weights, 0 on masked tokens.
    """
    if (mask[..., 1:] > mask[..., :-1]).any():  # a 0 before a 1: not a prefix (masks hold 0 and 1)
        return traced_sum_adjoint(mask.to(torch.float64), mask, trace).to(dtype)
    return _prefix_credit_weights(mask.sum(-1, keepdim=True).long(), mask.shape[-1], trace, dtype)


def scale_by_credit_weights(grad: torch.Tensor, mask: torch.Tensor, trace: TraceSpec) -> torch.Tensor:
    """c ⊙ grad with c = `credit_weights(mask)`: the backward of ε-trace's on-policy form (loss.py)."""
    return credit_weights(mask, trace, dtype=grad.dtype).mul_(grad)


def _prefix_credit_weights(lengths: torch.Tensor, length: int, trace: TraceSpec, dtype: torch.dtype) -> torch.Tensor:
    """`credit_weights` of rows that are prefixes of `lengths` [B, 1] ones, in a few passes over [B, T].

    recent: row i is W(L_i − k), a window of the fixed sequence W(T), …, W(1), 0, …, 0 starting at T − L_i, so the
    whole matrix is one row gather from a sliding-window view. both: for 2k + 1 ≤ L the weight is
    W(k + 1) + w(k)·(L − 1 − 2k) = [W(k + 1) − (2k + 1)·w(k)] + L·w(k), one fused multiply-add of [T] vectors, and
    for the other k it is the `recent` window."""
    device = lengths.device
    table = _window_sums(length, trace, device)  # [T+1] float64, W(0) = 0
    reversed_table = torch.cat([table.flip(0), table.new_zeros(max(length - 1, 0))]).to(dtype)  # [2T]: W(T − j)
    windows = reversed_table.unfold(0, length, 1)  # [T+1, T] view, row r = W(T − r − k) for k = 0 … T−1
    recent = windows.index_select(0, (length - lengths).flatten())  # [B, T], row i = W(L_i − k), 0 from k = L_i
    if trace.style == "recent":
        return recent
    k = torch.arange(length, device=device, dtype=torch.float64)
    early = torch.pow(torch.tensor(trace.decay, dtype=torch.float64, device=device), k).clamp(min=trace.floor)  # w(k)
    offset = (table[1:] - (2 * k + 1) * early).to(dtype)  # W(k + 1) − (2k + 1)·w(k)
    head = torch.addcmul(offset, lengths.to(dtype), early.to(dtype))  # [B, T]
    return head.where((2 * k + 1) <= lengths, recent)
