"""Fused CPU kernels of `traces.traced_sum` and `traces.traced_sum_adjoint` (numba; vLLM depends on it too).

They evaluate the same formulas as the torch code in traces.py (the derivations are in those functions'
docstrings), in one pass over [B, T] per direction instead of a dozen, with float64 accumulators and no [B, T]
temporary: the running sums C, E and P are kept as recurrences, and every lookup of a running sum at an earlier
(forward) or later (adjoint) position is a second copy of the same recurrence that trails the first. All those
positions are the same for every row (they depend on t, T and the trace, not on the mask), so the rows of the batch
are swept up to 16 at a time, in the lanes of vector registers.

Code shape, per group of rows: `_pack` copies the rows side by side into a [T, lanes] tile (8 × 8 blocks transposed
in registers; a right-padded row's padding reads as 0 there, other masks are applied to the tile), the sweep reads
the tile one position at a time, and `_unpack` copies its [T, lanes] result back into the rows. ε-trace's log πold is
subtracted while packing and added back while unpacking (`offset`), so its traced log-probabilities need no [B, T]
temporary either. The sweep is generated from the templates below with the lanes written out (`e0`, `e1`, …
instead of `e[b]`): LLVM's SLP vectorizer, which numba leaves off and this module switches on for its sweeps, turns
the copies of each line into vector instructions, and the running sums stay in registers. Lanes: the number of
rows rounded up to a power of 2, at most 16 (two vectors of 8 float64: the recurrences are latency-bound, and two
independent vectors per position fill the pipeline); the two tiles, T × lanes numbers each, are the kernels' only
scratch of size T. One variant is compiled per direction × style × floor × lanes, so the loops carry no branch.
Multiply-adds are fused (fastmath "contract" only: one rounding instead of two, no reordering of sums). Measured at
B = 16, T = 8192, `both`, float32, against the previous kernels (a scalar recurrence per row, 8 rows interleaved):
forward 0.10 → 0.06 ms, adjoint 0.13 → 0.06–0.07 ms. Compiled code is cached on disk like any `cache=True` function.

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

AVAILABLE = numba is not None and not numba.config.DISABLE_JIT  # the block copies exist only as compiled code

BLOCK = 8  # rows and positions of the block copies (8 × 8); 8 float64 sums fill one 512-bit vector (AVX-512)


@functools.lru_cache(maxsize=32)
def tables(decay: float, floor: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """a^n and w(n) = max(ε, a^n) for n = 0 … size − 1, float64 (np.power: each power rounded once)."""
    powers = np.power(np.float64(decay), np.arange(size, dtype=np.float64))
    return powers, np.maximum(powers, floor)


def _jit(fn):
    return numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"contract"})(fn) if AVAILABLE else fn


def _vectorized(fn):
    """`_jit(fn)` compiled with LLVM's SLP vectorizer, which turns the written-out lanes of a sweep into vector
    instructions. numba leaves it off (`NUMBA_SLP_VECTORIZE`) and reads the setting whenever it compiles a function
    (numba ≥ 0.6x builds its LLVM pass pipeline per compilation), so it is switched on only while one of these
    functions compiles (or loads from the disk cache) for new argument types: under numba's compiler lock, so that no
    other thread's compilation sees it, and restored afterwards. Calls with compiled types go straight to the code.
    With a numba that builds its pipeline once per process the setting is left alone (same results, scalar code)."""
    from numba.core.compiler_lock import global_compiler_lock

    dispatcher = _jit(fn)
    config = numba.core.config
    per_compile = hasattr(numba.core.codegen.CPUCodegen, "_pass_builder")
    compiled = False  # once it is, compilation at call time is off: new argument types raise TypeError

    def call(*args):
        nonlocal compiled
        if compiled:
            try:
                return dispatcher(*args)
            except TypeError:  # not compiled for these types yet
                pass
        with global_compiler_lock:
            previous = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = previous or per_compile
            dispatcher.disable_compile(False)
            try:
                return dispatcher(*args)
            finally:
                compiled = bool(dispatcher.signatures)
                dispatcher.disable_compile(compiled)
                config.SLP_VECTORIZE = previous

    call.dispatcher = dispatcher
    return call


# Templates. A line tagged "## row" is written once per lane b = 0 … LANES − 1 with {b} replaced, the copies one after
# the other (so that the SLP vectorizer finds them side by side); a tag naming a flag keeps the line only when the flag
# holds (flags: both, recent, floor, shared, split). `shared` (both, no floor): the trailing position t − n' is ⌊t/2⌋,
# so E, C and P trail together; `split` (both with a floor): P trails on its own. The sweep reads the packed tile
# x[t, b] (masked values, or the gradient) and writes o[t, b]; a row's running sums live in lane b.
_FORWARD = """
def {name}(values, offset, mask, out, tiles, decay, powers, early, floor, horizon):
    rows, length = values.shape
    x, o = tiles[0], tiles[1]
    lengths = np.empty(rows, dtype=np.int64)
    by_mask = not _prefix_lengths(mask, lengths)
    if by_mask:
        lengths[:] = length
    for first in range(0, rows, LANES):
        _pack(values, offset, lengths, first, x)  # a right-padded row's padding reads as 0
        if by_mask:
            _mask_tile(x, mask, first)
        e{b} = 0.0; el{b} = 0.0; cl{b} = 0.0; cw{b} = 0.0; ph{b} = 0.0  ## row
        lag = -1  # positions of the trailing recurrences (-1: the empty sum)
        win = -1
        half = -1
        for t in range(length):
            window = t - t // 2  ## both
            window = t + 1  ## recent
            n_exp = min(window, horizon)
            while lag < t - n_exp:  # advance the trailing E (and C, P) to t - n'
                lag += 1
                w = early[lag]  ## shared
                v{b} = x[lag, {b}]  ## row
                el{b} = decay * el{b} + v{b}  ## row
                cl{b} += v{b}  ## row floor
                ph{b} += w * v{b}  ## row shared
            while win < t - window:  ## floor
                win += 1  ## floor
                cw{b} += x[win, {b}]  ## row floor
            while half < t // 2:  ## split
                half += 1  ## split
                w = early[half]  ## split
                ph{b} += w * x[half, {b}]  ## row split
            scale = powers[n_exp]
            e{b} = decay * e{b} + x[t, {b}]  ## row
            o[t, {b}] = e{b} - scale * el{b}TERMS  ## row
        _unpack(o, offset, first, out)
"""

_ADJOINT = """
def {name}(grad, offset, mask, out, tiles, decay, powers, early, floor, horizon):
    rows, length = grad.shape
    x, o = tiles[0], tiles[1]
    lengths = np.empty(rows, dtype=np.int64)
    by_mask = not _prefix_lengths(mask, lengths)
    limits = np.full(rows, length)  # every g_t counts
    for first in range(0, rows, LANES):
        _pack(grad, None, limits, first, x)
        e{b} = 0.0; el{b} = 0.0; cl{b} = 0.0; cw{b} = 0.0; cf{b} = 0.0  ## row
        lag = length  # positions of the trailing recurrences (T: the empty sum)
        win = length
        far = length
        for k in range(length - 1, -1, -1):
            window = min(k + 1, length - k)  ## both
            window = length - k  ## recent
            n_exp = min(window, horizon)
            while lag > k + n_exp:  # advance the trailing E^r (and C^r) to k + n'
                lag -= 1
                g{b} = x[lag, {b}]  ## row
                el{b} = decay * el{b} + g{b}  ## row
                cl{b} += g{b}  ## row floor
                cl{b} += g{b}  ## row shared
            while win > k + window:  ## floor
                win -= 1  ## floor
                cw{b} += x[win, {b}]  ## row floor
            while far > min(2 * k + 1, length):  ## split
                far -= 1  ## split
                cf{b} += x[far, {b}]  ## row split
            scale = powers[n_exp]
            w = early[k]  ## both
            e{b} = decay * e{b} + x[k, {b}]  ## row
            o[k, {b}] = e{b} - scale * el{b}TERMS  ## row
        _unpack(o, None, first, out)
        _mask_rows(out, mask, lengths, by_mask, first, LANES)
"""


def _source(template: str, name: str, flags: set[str], lanes: int) -> str:
    """The sweep's Python source: template lines filtered by flags, per-lane lines written out for `lanes` lanes."""
    assert not {"shared", "floor"} <= flags, "C^r would be summed twice"
    terms = " + floor * (cl{b} - cw{b})" if "floor" in flags else ""
    if "both" in flags:
        terms += " + ph{b}" if template is _FORWARD else (" + w * cl{b}" if "shared" in flags else " + w * cf{b}")
    lines = []
    for line in template.strip("\n").splitlines():
        code, _, tags = line.partition("  ## ")
        tags = tags.split()
        if any(tag != "row" and tag not in flags for tag in tags):
            continue
        code = code.replace("TERMS", terms)
        lines.extend(code.format(b=b, name=name) for b in (range(lanes) if "row" in tags else [None]))
    return "\n".join(lines) + "\n"


def _block_copies():
    """The two 8 × 8 block copies between a group's rows and its tile, each as 8 vector loads, 24 shuffles (three
        swaps of one bit of the row index with the same bit of the column index transpose the block) and 8 vector
        stores; numba would move the 64 numbers one by one or gather them (2–3× slower in float32, measured at B = 16,
    T = 8192):

            pack_block(values, offset, limits, first, start, x, lane):
                x[start + j, lane + i] = values[first + i, start + j] − offset[…]  if start + j < limits[first + i], else 0
            unpack_block(o, offset, first, start, out, lane):
                out[first + i, start + j] = offset[…] + o[start + j, lane + i]

        for i, j < 8, with `offset` either an array shaped like `values` / `out` (same dtype) or None (no term). All
        arrays C-contiguous; float32 or float64."""
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    def pointer(context, builder, array_type, array, indices):
        array = context.make_array(array_type)(context, builder, array)
        shape, strides = cgutils.unpack_tuple(builder, array.shape), cgutils.unpack_tuple(builder, array.strides)
        return cgutils.get_item_pointer2(context, builder, array.data, shape, strides, array_type.layout, indices)

    def vector_at(context, builder, array_type, array, row, col):  # array[row, col : col + 8] as one vector
        vector = ir.VectorType(context.get_data_type(array_type.dtype), 8)
        return builder.bitcast(pointer(context, builder, array_type, array, [row, col]), vector.as_pointer())

    def lanes(values):
        return ir.Constant(ir.VectorType(ir.IntType(32), 8), values)

    def splat(builder, value):
        empty = ir.Constant(ir.VectorType(value.type, 8), ir.Undefined)
        vector = builder.insert_element(empty, value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(vector, vector, lanes([0] * 8))

    def transpose(builder, rows):
        rows = list(rows)
        for size in (4, 2, 1):
            low = lanes([c if not c & size else 8 + c - size for c in range(8)])
            high = lanes([c + size if not c & size else 8 + c for c in range(8)])
            for i in range(8):
                if not i & size:
                    a, b = rows[i], rows[i + size]
                    rows[i], rows[i + size] = builder.shuffle_vector(a, b, low), builder.shuffle_vector(a, b, high)
        return rows

    def pack_codegen(context, builder, signature, args):
        values_type, offset_type, limits_type, index_type, _, x_type, _ = signature.args
        values, offset, limits, first, start, x, lane = args
        index = [context.get_constant(index_type, i) for i in range(8)]
        columns = builder.add(splat(builder, start), ir.Constant(ir.VectorType(start.type, 8), list(range(8))))
        rows = []
        for i in range(8):
            row = builder.add(first, index[i])
            value = builder.load(vector_at(context, builder, values_type, values, row, start), align=1)
            if not isinstance(offset_type, numba.types.NoneType):
                value = builder.fsub(
                    value, builder.load(vector_at(context, builder, offset_type, offset, row, start), align=1)
                )
            limit = builder.load(pointer(context, builder, limits_type, limits, [row]))
            keep = builder.icmp_signed("<", columns, splat(builder, limit))
            rows.append(builder.select(keep, value, ir.Constant(value.type, None)))
        for j, row in enumerate(transpose(builder, rows)):
            builder.store(row, vector_at(context, builder, x_type, x, builder.add(start, index[j]), lane), align=1)
        return context.get_dummy_value()

    def unpack_codegen(context, builder, signature, args):
        o_type, offset_type, index_type, _, out_type, _ = signature.args
        o, offset, first, start, out, lane = args
        index = [context.get_constant(index_type, i) for i in range(8)]
        rows = [
            builder.load(vector_at(context, builder, o_type, o, builder.add(start, i), lane), align=1) for i in index
        ]
        for j, row in enumerate(transpose(builder, rows)):
            target = builder.add(first, index[j])
            if not isinstance(offset_type, numba.types.NoneType):
                row = builder.fadd(
                    builder.load(vector_at(context, builder, offset_type, offset, target, start), align=1), row
                )
            builder.store(row, vector_at(context, builder, out_type, out, target, start), align=1)
        return context.get_dummy_value()

    def matrices(*arrays):  # what the code generators assume: C-contiguous 2-d float arrays of one dtype
        arrays = [a for a in arrays if not isinstance(a, numba.types.NoneType)]
        return all(
            isinstance(a, numba.types.Array) and a.ndim == 2 and a.layout == "C" and a.dtype == arrays[0].dtype
            for a in arrays
        ) and arrays[0].dtype in (numba.types.float32, numba.types.float64)

    def indices(*numbers):
        return all(n == numbers[0] and isinstance(n, numba.types.Integer) for n in numbers)

    @intrinsic
    def pack_block(typingctx, values, offset, limits, first, start, x, lane):
        if matrices(values, offset, x) and indices(first, start, lane) and limits == numba.types.int64[::1]:
            return numba.types.void(values, offset, limits, first, start, x, lane), pack_codegen
        return None

    @intrinsic
    def unpack_block(typingctx, o, offset, first, start, out, lane):
        if matrices(o, offset, out) and indices(first, start, lane):
            return numba.types.void(o, offset, first, start, out, lane), unpack_codegen
        return None

    return pack_block, unpack_block


if AVAILABLE:
    _pack_block, _unpack_block = _block_copies()


@_jit
def _pack(values, offset, limits, first, x):  # pragma: no cover - compiled
    """x[t, b] = values[first + b, t] (minus offset[first + b, t] unless offset is None) for t < limits[first + b],
    else 0, and 0 in lanes past the last row: the rows of a group side by side, so that one vector instruction updates
    the running sums of all of them. Whole blocks of 8 rows × 8 positions move by `_pack_block`, the rest (and tiles
    of fewer than 8 lanes) one by one."""
    rows, length = values.shape
    for lane in range(0, x.shape[1], BLOCK):
        start = 0
        if first + lane + BLOCK <= rows:
            while start + BLOCK <= length:
                _pack_block(values, offset, limits, first + lane, start, x, lane)
                start += BLOCK
        for b in range(lane, min(lane + BLOCK, x.shape[1])):
            row = first + b
            for t in range(start, length):
                if row >= rows or t >= limits[row]:
                    x[t, b] = 0.0
                elif offset is None:
                    x[t, b] = values[row, t]
                else:
                    x[t, b] = values[row, t] - offset[row, t]


@_jit
def _mask_tile(x, mask, first):  # pragma: no cover - compiled
    """x[t, b] = 0 where mask[first + b, t] = 0."""
    rows, length = mask.shape
    for b in range(min(x.shape[1], rows - first)):
        for t in range(length):
            if mask[first + b, t] == 0:
                x[t, b] = 0.0


@_jit
def _unpack(o, offset, first, out):  # pragma: no cover - compiled
    """out[first + b, t] = o[t, b] (plus offset[first + b, t] unless offset is None) for the rows of the group."""
    rows, length = out.shape
    for lane in range(0, o.shape[1], BLOCK):
        start = 0
        if first + lane + BLOCK <= rows:
            while start + BLOCK <= length:
                _unpack_block(o, offset, first + lane, start, out, lane)
                start += BLOCK
        for row in range(first + lane, min(first + lane + BLOCK, rows)):
            b = row - first
            for t in range(start, length):
                out[row, t] = o[t, b] if offset is None else offset[row, t] + o[t, b]


@_jit
def _mask_rows(out, mask, lengths, by_mask, first, lanes):  # pragma: no cover - compiled
    """out[first + b, t] = 0 where the token is masked (the adjoint's result lives on real tokens only)."""
    rows, length = out.shape
    for row in range(first, min(first + lanes, rows)):
        if by_mask:
            for t in range(length):
                if mask[row, t] == 0:
                    out[row, t] = 0.0
        else:
            out[row, lengths[row] :] = 0.0


@functools.cache
def _sweep(direction: str, both: bool, has_floor: bool, lanes: int):
    """The compiled sweep of one variant (compiled on first use, then cached on disk). Its source is
    `_source(template, name, flags, lanes)`: numba's errors quote line numbers of that source, not of this file."""
    flags = {"both" if both else "recent"}
    if has_floor:
        flags.add("floor")
    if both:
        flags.add("split" if has_floor else "shared")
    name = "_".join([direction, *sorted(flags), str(lanes)])
    template = _FORWARD if direction == "forward" else _ADJOINT
    namespace = {"np": np, "LANES": lanes, "__name__": __name__}
    namespace.update(_pack=_pack, _unpack=_unpack, _mask_tile=_mask_tile, _mask_rows=_mask_rows)
    namespace.update(_prefix_lengths=_prefix_lengths)
    exec(compile(_source(template, name, flags, lanes), __file__, "exec"), namespace)  # file name: numba's disk cache
    return _vectorized(namespace[name])


@_jit
def _prefix_lengths(mask, lengths):  # pragma: no cover - compiled
    """lengths[b] = number of nonzeros of mask row b; True when every row is a prefix of nonzeros. A row's nonzero
    positions, n distinct integers ≥ 0, sum to at least 0 + 1 + … + (n − 1), with equality only for {0, …, n − 1}:
    so one branch-free (vectorised) pass counts and checks."""
    rows, length = mask.shape
    prefix = True
    for b in range(rows):
        ones = 0
        positions = 0
        for k in range(length):
            nonzero = mask[b, k] != 0
            ones += nonzero
            positions += k * nonzero
        lengths[b] = ones
        prefix &= 2 * positions == ones * (ones - 1)
    return prefix


def prefix_lengths(mask: np.ndarray) -> np.ndarray | None:
    """[B] int64 lengths when every row of the [B, T] mask is a prefix of ones; None otherwise."""
    lengths = np.empty(mask.shape[0], dtype=np.int64)
    return lengths if _prefix_lengths(mask, lengths) else None


@_jit
def _credit_scaled(grad, lengths, out, window_sums, early, both):  # pragma: no cover - compiled
    """out = c ⊙ grad with the closed form of `traces.credit_weights` (W = window_sums, w = early) for rows that are
    prefixes of lengths[b] ones."""
    batch, length = grad.shape
    for b in range(batch):
        ones = lengths[b]
        for k in range(length):
            if k >= ones:
                out[b, k] = 0.0
                continue
            if both and 2 * k + 1 <= ones:
                credit = window_sums[k + 1] + early[k] * (ones - 1 - 2 * k)
            else:
                credit = window_sums[ones - k]
            out[b, k] = credit * np.float64(grad[b, k])


def credit_scaled_gradient(
    grad: torch.Tensor, mask: torch.Tensor, window_sums: np.ndarray, early: np.ndarray, style: str
):
    """c ⊙ grad for CPU tensors whose mask rows are prefixes of ones (c: `traces.credit_weights`); None otherwise.

    window_sums: W(n) for n = 0 … ≥ T (float64); early: w(k) = max(ε, a^k) for k = 0 … ≥ T − 1."""
    work = grad.detach()
    if work.dtype not in (torch.float32, torch.float64):
        return None
    work = work.contiguous()
    out = torch.empty_like(work)
    if work.numel() == 0:
        return out
    mask = _rows(mask, work.shape, MASK_DTYPES)
    flat = work.reshape(-1, work.shape[-1])
    lengths = prefix_lengths(mask.numpy())
    if lengths is None:
        return None
    _credit_scaled(flat.numpy(), lengths, out.view_as(flat).numpy(), window_sums, early, style == "both")
    return out


VALUE_DTYPES = (torch.float32, torch.float64)
MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64)


def _rows(tensor: torch.Tensor, shape: torch.Size, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """`tensor` broadcast to `shape` as contiguous [rows, T] in one of `dtypes` (others as float32), for numba."""
    if tensor.shape == shape and len(shape) == 2 and tensor.dtype in dtypes and tensor.is_contiguous():
        return tensor.detach()  # TRL's tensors: nothing to do
    tensor = tensor.detach().expand(*shape).reshape(-1, shape[-1])
    return (tensor if tensor.dtype in dtypes else tensor.float()).contiguous()


def _run(direction: str, values, mask, decay, style, floor, horizon, offset=None) -> torch.Tensor:
    """Runs the forward or adjoint sweep of `style` over [..., T] CPU tensors, up to 16 rows at a time; with `offset`
    (forward only; a tensor of the shape and dtype of `values`), offset + sweep(values − offset)."""
    if values.numel() == 0:
        return torch.empty_like(values)
    work = _rows(values, values.shape, VALUE_DTYPES)
    length = work.shape[1]
    out = torch.empty_like(work)
    powers, early = tables(decay, floor, 1 << length.bit_length())  # ≥ T + 1 entries, few sizes
    lanes = min(2 * BLOCK, 1 << (work.shape[0] - 1).bit_length())  # the rows, rounded up to a power of 2, ≤ 16
    tiles = work.new_empty(2, length, lanes).numpy()  # one group's packed rows and results, reused by every group
    # the floor only changes weights at lags ≥ L* (horizon); no window reaches it when L* ≥ T
    sweep = _sweep(direction, style == "both", floor > 0.0 and horizon < length, lanes)
    mask = _rows(mask, values.shape, MASK_DTYPES).numpy()
    if offset is not None:
        offset = _rows(offset.to(work.dtype), values.shape, (work.dtype,)).numpy()
    sweep(
        work.numpy(), offset, mask, out.numpy(), tiles, float(decay), powers, early, float(floor),
        int(horizon),
    )  # fmt: skip
    return out if out.shape == values.shape and out.dtype == values.dtype else out.view(values.shape).to(values.dtype)


def traced_sum(values, mask, decay, style, floor, horizon, offset=None) -> torch.Tensor:
    """`traces._traced_sum` for CPU tensors ([..., T], any float dtype; float32/float64 are not copied); with
    `offset` (same shape and dtype), offset + traced_sum(values − offset): for float32 and float64 the difference and
    the sum are taken in that dtype, as torch would; other dtypes are computed in float32 and rounded once."""
    return _run("forward", values, mask, decay, style, floor, horizon, offset)


def traced_sum_adjoint(grad, mask, decay, style, floor, horizon) -> torch.Tensor:
    """`traces._traced_sum_adjoint` for CPU tensors."""
    return _run("adjoint", grad, mask, decay, style, floor, horizon)
