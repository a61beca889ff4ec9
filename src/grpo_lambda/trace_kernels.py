"""Fused CPU kernels of `traces.traced_sum` and `traces.traced_sum_adjoint` (numba; vLLM depends on it too).

They evaluate the same formulas as the torch code in traces.py (the derivations are in those functions'
docstrings), in one pass over [B, T] per direction instead of a dozen, with float64 accumulators and no [B, T]
temporary: the running sums C, E and P are kept as recurrences, and every lookup of a running sum at an earlier
(forward) or later (adjoint) position is a second copy of the same recurrence that trails the first. All those
positions are the same for every row (they depend on t, T and the trace, not on the mask), so the loop runs over
positions and, inside, over the rows of the batch, which are independent: the recurrences of different rows
overlap in the CPU's pipeline instead of waiting on each other. Scratch memory: a few float64 numbers per row.

Used by traces.py for CPU tensors; GPU tensors keep the torch scan. `GRPO_LAMBDA_TRACE_KERNEL=torch` turns the
kernels off (e.g. to compare; the tests run both against the dense matrix).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

try:
    import numba
except ImportError:  # pragma: no cover - numba comes with vLLM and with our install_requires
    numba = None

AVAILABLE = numba is not None


@functools.lru_cache(maxsize=32)
def tables(decay: float, floor: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """a^n and w(n) = max(ε, a^n) for n = 0 … size − 1, float64 (np.power: each power rounded once)."""
    powers = np.power(np.float64(decay), np.arange(size, dtype=np.float64))
    return powers, np.maximum(powers, floor)


def _tables_for(decay: float, floor: float, length: int) -> tuple[np.ndarray, np.ndarray]:
    size = 1 << max(length, 1).bit_length()  # ≥ length + 1; a few sizes cover all batches
    return tables(decay, floor, size)


GROUP = 8  # rows per sweep: enough independent recurrences to fill the pipeline, few enough strided streams that
# rows T·4 bytes apart (a multiple of 4 KiB) do not evict each other from the L1 cache (measured: 8 beats 4 and 16)


def _jit(fn):
    return numba.njit(cache=True, nogil=True, boundscheck=False)(fn) if AVAILABLE else fn


@_jit
def _forward(values, mask, out, decay, powers, early, floor, horizon, both):  # pragma: no cover - compiled
    """out[b, t] = S_t of traced_sum: E_t − a^n'·E_{t−n'} + ε·(C_{t−n'} − C_{t−n}) (+ P_⌊t/2⌋ for `both`)."""
    batch, length = values.shape
    for first in range(0, batch, GROUP):
        _forward_rows(values[first : first + GROUP], mask[first : first + GROUP], out[first : first + GROUP],
                      decay, powers, early, floor, horizon, both)  # fmt: skip


@_jit
def _forward_rows(values, mask, out, decay, powers, early, floor, horizon, both):  # pragma: no cover - compiled
    batch, length = values.shape
    e = np.zeros(batch)  # E_t
    e_lag = np.zeros(batch)  # E_j at j = t − n'
    c_lag = np.zeros(batch)  # C_j at j = t − n'
    c_win = np.zeros(batch)  # C_j at j = t − n
    p_half = np.zeros(batch)  # P_j at j = ⌊t/2⌋, P_j = Σ_{k ≤ j} w(k)·v_k
    lag = -1  # positions of the trailing recurrences (−1: the empty sum)
    win = -1
    half = -1
    shared = both and horizon >= length  # then t − n' = ⌊t/2⌋: E, C and P trail at the same position
    for t in range(length):
        window = t - t // 2 if both else t + 1
        n_exp = min(window, horizon)
        while lag < t - n_exp:  # advance the trailing E and C to t − n'
            lag += 1
            for b in range(batch):
                v = np.float64(values[b, lag]) if mask[b, lag] != 0 else 0.0
                e_lag[b] = decay * e_lag[b] + v
                c_lag[b] += v
                if shared:
                    p_half[b] += early[lag] * v
            if shared:
                half = lag
        if floor > 0.0:
            while win < t - window:
                win += 1
                for b in range(batch):
                    c_win[b] += np.float64(values[b, win]) if mask[b, win] != 0 else 0.0
        if both:
            while half < t // 2:
                half += 1
                for b in range(batch):
                    if mask[b, half] != 0:
                        p_half[b] += early[half] * np.float64(values[b, half])
        scale = powers[n_exp]
        for b in range(batch):
            v = np.float64(values[b, t]) if mask[b, t] != 0 else 0.0
            e[b] = decay * e[b] + v
            total = e[b] - scale * e_lag[b]
            if floor > 0.0:
                total += floor * (c_lag[b] - c_win[b])
            if both:
                total += p_half[b]
            out[b, t] = total


@_jit
def _adjoint(grad, mask, out, decay, powers, early, floor, horizon, both):  # pragma: no cover - compiled
    """out[b, k] = mask·(E^r_k − a^n'·E^r_{k+n'} + ε·(C^r_{k+n'} − C^r_{k+n}) (+ w(k)·C^r_{2k+1} for `both`))."""
    batch, length = grad.shape
    for first in range(0, batch, GROUP):
        _adjoint_rows(grad[first : first + GROUP], mask[first : first + GROUP], out[first : first + GROUP],
                      decay, powers, early, floor, horizon, both)  # fmt: skip


@_jit
def _adjoint_rows(grad, mask, out, decay, powers, early, floor, horizon, both):  # pragma: no cover - compiled
    batch, length = grad.shape
    e = np.zeros(batch)  # E^r_k
    e_lag = np.zeros(batch)  # E^r_j at j = k + n'
    c_lag = np.zeros(batch)  # C^r_j at j = k + n'
    c_win = np.zeros(batch)  # C^r_j at j = k + n
    c_far = np.zeros(batch)  # C^r_j at j = 2k + 1
    lag = length  # positions of the trailing recurrences (T: the empty sum)
    win = length
    far = length
    shared = both and horizon >= length  # then k + n' = min(2k + 1, T): E^r and C^r trail at the same position
    if shared:
        c_far = c_lag
    for k in range(length - 1, -1, -1):
        window = min(k + 1, length - k) if both else length - k
        n_exp = min(window, horizon)
        while lag > k + n_exp:
            lag -= 1
            for b in range(batch):
                g = np.float64(grad[b, lag])
                e_lag[b] = decay * e_lag[b] + g
                c_lag[b] += g
            if shared:
                far = lag  # and c_far is c_lag
        if floor > 0.0:
            while win > k + window:
                win -= 1
                for b in range(batch):
                    c_win[b] += np.float64(grad[b, win])
        if both:
            while far > min(2 * k + 1, length):
                far -= 1
                for b in range(batch):
                    c_far[b] += np.float64(grad[b, far])
        scale = powers[n_exp]
        for b in range(batch):
            e[b] = decay * e[b] + np.float64(grad[b, k])
            if mask[b, k] == 0:
                out[b, k] = 0.0
                continue
            total = e[b] - scale * e_lag[b]
            if floor > 0.0:
                total += floor * (c_lag[b] - c_win[b])
            if both:
                total += early[k] * c_far[b]
            out[b, k] = total


@_jit
def _credit_scaled(grad, mask, out, window_sums, early, both):  # pragma: no cover - compiled
    """out = c ⊙ grad with the closed form of `traces.credit_weights` (W = window_sums, w = early); False, with out
    unfinished, when a row of the mask is not a prefix of ones."""
    batch, length = grad.shape
    for b in range(batch):
        ones = 0
        while ones < length and mask[b, ones] != 0:
            ones += 1
        for k in range(ones, length):
            if mask[b, k] != 0:
                return False
        for k in range(length):
            if k >= ones:
                out[b, k] = 0.0
                continue
            if both and 2 * k + 1 <= ones:
                credit = window_sums[k + 1] + early[k] * (ones - 1 - 2 * k)
            else:
                credit = window_sums[ones - k]
            out[b, k] = credit * np.float64(grad[b, k])
    return True


def credit_scaled_gradient(
    grad: torch.Tensor, mask: torch.Tensor, window_sums: np.ndarray, early: np.ndarray, style: str
):
    """c ⊙ grad for CPU tensors whose mask rows are prefixes of ones (c: `traces.credit_weights`); None otherwise.

    window_sums: W(n) for n = 0 … ≥ T (float64); early: w(k) = max(ε, a^k) for k = 0 … ≥ T − 1."""
    work = grad.detach()
    if work.dtype not in (torch.float32, torch.float64):
        return None
    work = work.contiguous()
    mask = mask.detach().expand_as(work).contiguous()
    out = torch.empty_like(work)
    if work.numel() == 0:
        return out
    flat = work.reshape(-1, work.shape[-1])
    if not _credit_scaled(flat.numpy(), mask.reshape(flat.shape).numpy(), out.view_as(flat).numpy(), window_sums,
                          early, style == "both"):  # fmt: skip
        return None
    return out


def _run(kernel, values: torch.Tensor, mask: torch.Tensor, decay: float, style: str, floor: float, horizon: int):
    dtype = values.dtype
    work = values.detach()
    if dtype not in (torch.float32, torch.float64):
        work = work.float()
    work = work.contiguous()
    mask = mask.detach().contiguous()
    if mask.dtype not in (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64):
        mask = mask.float()
    out = torch.empty_like(work)
    if work.numel():
        powers, early = _tables_for(decay, floor, work.shape[-1])
        flat = work.reshape(-1, work.shape[-1])
        kernel(flat.numpy(), mask.reshape(-1, mask.shape[-1]).numpy(), out.view_as(flat).numpy(), float(decay),
               powers, early, float(floor), int(horizon), style == "both")  # fmt: skip
    return out.to(dtype)


def traced_sum(values, mask, decay, style, floor, horizon) -> torch.Tensor:
    """`traces._traced_sum` for CPU tensors ([..., T], any float dtype; float32/float64 are not copied)."""
    return _run(_forward, values, mask.expand_as(values), decay, style, floor, horizon)


def traced_sum_adjoint(grad, mask, decay, style, floor, horizon) -> torch.Tensor:
    """`traces._traced_sum_adjoint` for CPU tensors."""
    return _run(_adjoint, grad, mask.expand_as(grad), decay, style, floor, horizon)
