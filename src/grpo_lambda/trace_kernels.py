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


GROUP = 8  # rows per sweep: enough independent recurrences to fill the pipeline, few enough strided streams that
# rows T·4 bytes apart (a multiple of 4 KiB) do not evict each other from the L1 cache (measured: 8 beats 4 and 16).
# The row loops have this constant trip count, so the compiler keeps the running sums in registers.


def _jit(fn):
    return numba.njit(cache=True, nogil=True, boundscheck=False)(fn) if AVAILABLE else fn


def _specialise(both: bool, has_floor: bool):
    """The forward and adjoint sweeps over GROUP rows for one style and floor: `both` and `has_floor` are constants
    of the compiled code (numba caches each of the four variants), so the loops carry no branches on them."""

    @_jit
    def forward(values, mask, out, first, decay, powers, early, floor, horizon):  # pragma: no cover - compiled
        """out[b, t] = S_t of traced_sum: E_t − a^n'·E_{t−n'} + ε·(C_{t−n'} − C_{t−n}) (+ P_⌊t/2⌋ for `both`), for
        rows first … first + GROUP − 1."""
        length = values.shape[1]
        e = np.zeros(GROUP)  # E_t
        e_lag = np.zeros(GROUP)  # E_j at j = t − n'
        c_lag = np.zeros(GROUP)  # C_j at j = t − n'
        c_win = np.zeros(GROUP)  # C_j at j = t − n
        p_half = np.zeros(GROUP)  # P_j at j = ⌊t/2⌋, P_j = Σ_{k ≤ j} w(k)·v_k
        lag = -1  # positions of the trailing recurrences (−1: the empty sum)
        win = -1
        half = -1
        shared = both and (not has_floor or horizon >= length)  # then t − n' = ⌊t/2⌋: E, C and P trail together
        for t in range(length):
            window = t - t // 2 if both else t + 1
            n_exp = min(window, horizon)
            while lag < t - n_exp:  # advance the trailing E and C to t − n'
                lag += 1
                for b in range(GROUP):
                    v = np.float64(values[first + b, lag]) if mask[first + b, lag] != 0 else 0.0
                    e_lag[b] = decay * e_lag[b] + v
                    c_lag[b] += v
                    if shared:
                        p_half[b] += early[lag] * v
                if shared:
                    half = lag
            if has_floor:
                while win < t - window:
                    win += 1
                    for b in range(GROUP):
                        c_win[b] += np.float64(values[first + b, win]) if mask[first + b, win] != 0 else 0.0
            if both:
                while half < t // 2:
                    half += 1
                    for b in range(GROUP):
                        if mask[first + b, half] != 0:
                            p_half[b] += early[half] * np.float64(values[first + b, half])
            scale = powers[n_exp]
            for b in range(GROUP):
                v = np.float64(values[first + b, t]) if mask[first + b, t] != 0 else 0.0
                e[b] = decay * e[b] + v
                total = e[b] - scale * e_lag[b]
                if has_floor:
                    total += floor * (c_lag[b] - c_win[b])
                if both:
                    total += p_half[b]
                out[first + b, t] = total

    @_jit
    def adjoint(grad, mask, out, first, decay, powers, early, floor, horizon):  # pragma: no cover - compiled
        """out[b, k] = mask·(E^r_k − a^n'·E^r_{k+n'} + ε·(C^r_{k+n'} − C^r_{k+n}) (+ w(k)·C^r_{2k+1} for `both`)),
        for rows first … first + GROUP − 1."""
        length = grad.shape[1]
        e = np.zeros(GROUP)  # E^r_k
        e_lag = np.zeros(GROUP)  # E^r_j at j = k + n'
        c_lag = np.zeros(GROUP)  # C^r_j at j = k + n'
        c_win = np.zeros(GROUP)  # C^r_j at j = k + n
        c_far = np.zeros(GROUP)  # C^r_j at j = 2k + 1
        lag = length  # positions of the trailing recurrences (T: the empty sum)
        win = length
        far = length
        shared = both and (not has_floor or horizon >= length)  # then k + n' = min(2k + 1, T): E^r, C^r trail together
        for k in range(length - 1, -1, -1):
            window = min(k + 1, length - k) if both else length - k
            n_exp = min(window, horizon)
            while lag > k + n_exp:
                lag -= 1
                for b in range(GROUP):
                    g = np.float64(grad[first + b, lag])
                    e_lag[b] = decay * e_lag[b] + g
                    c_lag[b] += g
                if shared:
                    far = lag
            if has_floor:
                while win > k + window:
                    win -= 1
                    for b in range(GROUP):
                        c_win[b] += np.float64(grad[first + b, win])
            if both:
                while far > min(2 * k + 1, length):
                    far -= 1
                    for b in range(GROUP):
                        c_far[b] += np.float64(grad[first + b, far])
            scale = powers[n_exp]
            for b in range(GROUP):
                e[b] = decay * e[b] + np.float64(grad[first + b, k])
                total = e[b] - scale * e_lag[b]
                if has_floor:
                    total += floor * (c_lag[b] - c_win[b])
                if shared:
                    total += early[k] * c_lag[b]
                elif both:
                    total += early[k] * c_far[b]
                out[first + b, k] = total if mask[first + b, k] != 0 else 0.0

    @_jit
    def sweep_forward(values, mask, out, decay, powers, early, floor, horizon):  # pragma: no cover - compiled
        for first in _groups(values.shape[0]):
            forward(values, mask, out, first, decay, powers, early, floor, horizon)

    @_jit
    def sweep_adjoint(grad, mask, out, decay, powers, early, floor, horizon):  # pragma: no cover - compiled
        for first in _groups(grad.shape[0]):
            adjoint(grad, mask, out, first, decay, powers, early, floor, horizon)

    return sweep_forward, sweep_adjoint


@_jit
def _groups(rows):  # pragma: no cover - compiled
    """First rows of the GROUP-row sweeps over rows ≥ GROUP: the last one overlaps its predecessor when GROUP does
    not divide rows (those rows are computed twice, identically)."""
    starts = np.arange(0, rows - GROUP + 1, GROUP)
    if rows % GROUP:
        starts = np.append(starts, rows - GROUP)
    return starts


_SWEEPS = {(both, has_floor): _specialise(both, has_floor) for both in (False, True) for has_floor in (False, True)}


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


def _run(direction: int, values, mask, decay: float, style: str, floor: float, horizon: int) -> torch.Tensor:
    """Runs the forward (direction 0) or adjoint (1) sweeps of `style` over [..., T] CPU tensors, GROUP rows at a
    time; fewer than GROUP rows are padded with masked zeros."""
    dtype = values.dtype
    work = values.detach()
    if dtype not in (torch.float32, torch.float64):
        work = work.float()
    length = work.shape[-1]
    work = work.reshape(-1, length).contiguous()
    mask = mask.detach().expand(*values.shape).reshape(-1, length).contiguous()
    if mask.dtype not in (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64):
        mask = mask.float()
    rows = work.shape[0]
    if 0 < rows < GROUP:
        work = torch.cat([work, work.new_zeros(GROUP - rows, length)])
        mask = torch.cat([mask, mask.new_zeros(GROUP - rows, length)])
    out = torch.empty_like(work)
    if work.numel():
        sweep = _SWEEPS[(style == "both", floor > 0.0)][direction]
        powers, early = tables(decay, floor, 1 << max(length, 1).bit_length())  # ≥ T + 1 entries, few sizes
        sweep(work.numpy(), mask.numpy(), out.numpy(), float(decay), powers, early, float(floor), int(horizon))
    return out[:rows].reshape(values.shape).to(dtype)


def traced_sum(values, mask, decay, style, floor, horizon) -> torch.Tensor:
    """`traces._traced_sum` for CPU tensors ([..., T], any float dtype; float32/float64 are not copied)."""
    return _run(0, values, mask, decay, style, floor, horizon)


def traced_sum_adjoint(grad, mask, decay, style, floor, horizon) -> torch.Tensor:
    """`traces._traced_sum_adjoint` for CPU tensors."""
    return _run(1, grad, mask, decay, style, floor, horizon)
