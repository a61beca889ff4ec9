"""traced_sum / trace_matrix against the paper's definitions (Eq. 2, Eq. 17–18) and their stated limits."""

import itertools

import pytest
import torch

from grpo_lambda.traces import (
    credit_weights,
    discounted_cumsum,
    scale_by_credit_weights,
    trace_matrix,
    traced_sum,
    traced_sum_adjoint,
)

LAMBDAS = [0.0, 0.5, 0.98, 0.99, 1.0]


def tr_reference(t: int, lag: int, gamma: float, lam: float, style: str, floor: float) -> float:
    """tr(t, l) written straight from Eq. 2 / Eq. 17–18, in Python floats."""
    if lag == 0:
        return 1.0
    a = gamma * lam
    weight = a**lag if style == "recent" else max(a**lag, a ** (t - lag))
    return max(floor, weight)


@pytest.mark.parametrize("style", ["recent", "both"])
@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("gamma,floor", [(1.0, 0.0), (0.9, 0.0), (1.0, 0.05), (0.95, 0.3)])
def test_trace_matrix_matches_equation(style, lam, gamma, floor):
    length = 23
    matrix = trace_matrix(length, gamma, lam, style, floor)
    assert matrix.dtype == torch.float64 and matrix.shape == (length, length)
    for t, k in itertools.product(range(length), repeat=2):
        expected = tr_reference(t, t - k, gamma, lam, style, floor) if k <= t else 0.0
        assert matrix[t, k].item() == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_trace_matrix_limits():
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.equal(trace_matrix(6, 1.0, 0.0, "recent"), eye)  # λ = 0: GRPO, each token only itself
    assert torch.equal(trace_matrix(6, 1.0, 1.0, "recent"), torch.tril(torch.ones(6, 6, dtype=torch.float64)))
    both = trace_matrix(6, 1.0, 0.0, "both")  # (γλ)^0 = 1 keeps the first token in every row
    expected = eye.clone()
    expected[:, 0] = 1.0
    assert torch.equal(both, expected)


def test_hand_computed_example():
    # a = γλ = 0.5, T = 3.  recent row 2: v2 + 0.5 v1 + 0.25 v0.
    # both row 2: k=0 → max(0.5², 0.5⁰) = 1; k=1 → max(0.5¹, 0.5¹) = 0.5; k=2 → 1.
    values = torch.tensor([[4.0, 2.0, 1.0]], dtype=torch.float64)
    mask = torch.ones_like(values)
    recent = traced_sum(values, mask, 1.0, 0.5, "recent")
    both = traced_sum(values, mask, 1.0, 0.5, "both")
    assert recent.tolist() == [[4.0, 2.0 + 2.0, 1.0 + 1.0 + 1.0]]
    assert both.tolist() == [[4.0, 2.0 + 4.0, 1.0 + 1.0 + 4.0]]


def random_masks(batch: int, length: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A mask with holes and a right-padded one (prefixes of random lengths, one full row, one empty row when there
    are three rows or more)."""
    holes = (torch.rand(batch, length, generator=generator) > 0.25).to(torch.float64)
    lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    lengths[0] = length
    if batch >= 3:
        lengths[-1] = 0
    return [holes, (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)]


CASES = [
    (batch, length, lam, gamma, style, floor, seed)
    for (batch, length), lam, (gamma, floor), style, seed in itertools.product(
        [(1, 1), (3, 2), (2, 63), (4, 64), (2, 65), (3, 300), (8, 50), (11, 97)],  # lanes 1 … 16, blocks of 8
        LAMBDAS,
        [(1.0, 0.0), (0.97, 0.0), (1.0, 1e-3), (0.9, 0.2), (1.0, 1.0)],
        ["recent", "both"],
        [0],
    )
] + [(2, 4096, lam, 1.0, style, floor, 1) for lam in LAMBDAS for style in ["recent", "both"] for floor in (0.0, 0.01)]


@pytest.mark.parametrize("batch,length,lam,gamma,style,floor,seed", CASES)
def test_traced_sum_matches_dense_matrix(batch, length, lam, gamma, style, floor, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, dtype=torch.float64, generator=generator)
    for mask in random_masks(batch, length, generator):
        dense = (values * mask) @ trace_matrix(length, gamma, lam, style, floor).T
        atol = 1e-9 * max(1.0, dense.abs().max().item())
        fast = traced_sum(values, mask, gamma, lam, style, floor)
        torch.testing.assert_close(fast, dense, rtol=1e-9, atol=atol)


ADJOINT_CASES = [
    (batch, length, lam, gamma, style, floor)
    for (batch, length), lam, (gamma, floor), style in itertools.product(
        [(1, 1), (3, 2), (2, 65), (3, 300), (11, 97)],
        LAMBDAS,
        [(1.0, 0.0), (0.97, 0.0), (1.0, 1e-3), (0.9, 0.2), (1.0, 1.0)],
        ["recent", "both"],
    )
] + [(2, 4096, lam, 1.0, style, floor) for lam in (0.99, 1.0) for style in ["recent", "both"] for floor in (0.0, 0.01)]


@pytest.mark.parametrize("batch,length,lam,gamma,style,floor", ADJOINT_CASES)
def test_adjoint_and_gradient_match_dense_matrix(batch, length, lam, gamma, style, floor):
    """traced_sum_adjoint is g @ M (the transpose), and it is traced_sum's backward: ∂(Σ g·S)/∂v = mask·(g @ M)."""
    generator = torch.Generator().manual_seed(length)
    grad = torch.randn(batch, length, dtype=torch.float64, generator=generator)
    for mask in random_masks(batch, length, generator):
        dense = (grad @ trace_matrix(length, gamma, lam, style, floor)) * mask
        atol = 1e-9 * max(1.0, dense.abs().max().item())
        adjoint = traced_sum_adjoint(grad, mask, gamma, lam, style, floor)
        torch.testing.assert_close(adjoint, dense, rtol=1e-9, atol=atol)
        values = torch.randn(batch, length, dtype=torch.float64, generator=generator, requires_grad=True)
        (traced_sum(values, mask, gamma, lam, style, floor) * grad).sum().backward()
        torch.testing.assert_close(values.grad, dense, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("batch,length,lam,gamma,style,floor", ADJOINT_CASES)
def test_credit_weights_match_dense_column_sums(batch, length, lam, gamma, style, floor):
    """c_k = Σ_{t ≥ k, mask_t} tr(t, t − k): the closed form (prefix masks, incl. empty and full rows) and the
    adjoint scan (masks with holes) against the dense matrix; `scale_by_credit_weights` (the on-policy backward)
    is c ⊙ g."""
    generator = torch.Generator().manual_seed(length + 1)
    matrix = trace_matrix(length, gamma, lam, style, floor)
    for mask in random_masks(batch, length, generator):
        dense = (mask @ matrix) * mask
        atol = 1e-9 * max(1.0, dense.abs().max().item())
        torch.testing.assert_close(credit_weights(mask, gamma, lam, style, floor), dense, rtol=1e-9, atol=atol)
        grad = torch.randn(batch, length, dtype=torch.float64, generator=generator)
        scaled = scale_by_credit_weights(grad, mask, gamma, lam, style, floor)
        torch.testing.assert_close(scaled, dense * grad, rtol=1e-9, atol=atol * grad.abs().max().item())


def test_float32_input_keeps_dtype_and_precision():
    values = torch.randn(2, 2000)
    mask = torch.ones(2, 2000)
    dense = values.double() @ trace_matrix(2000, 1.0, 0.99, "both").T
    out = traced_sum(values, mask, 1.0, 0.99, "both")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), dense, rtol=1e-6, atol=1e-5)


def test_float32_log_ratio_with_int_prefix_mask():
    """ε-trace's inputs as TRL gives them: float32 log πθ (with gradient) and log πold, an int32 right-padded mask."""
    logps = -3 * torch.rand(3, 500, dtype=torch.float64)
    old = logps + 0.05 * torch.randn(3, 500, dtype=torch.float64)
    mask = (torch.arange(500)[None, :] < torch.tensor([[500], [321], [7]])).int()
    matrix = trace_matrix(500, 1.0, 0.99, "both")
    x = logps.float().requires_grad_()
    out = traced_sum(x - old.float(), mask, 1.0, 0.99, "both")
    assert out.dtype == torch.float32
    expected = ((x.double() - old.float().double()) * mask) @ matrix.T
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-6, atol=1e-5)
    grad = torch.randn(3, 500)
    out.backward(grad)
    torch.testing.assert_close(x.grad.double(), (grad.double() @ matrix) * mask, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [6, 19, 27])
@pytest.mark.parametrize("style,floor", [("both", 0.0), ("recent", 0.01)])
def test_row_groups_with_garbage_in_the_padding(style, floor, rows, dtype):
    """NaN and 1e30 in the padding must not reach any output; with log πold as offset, and NaN in its padding too."""
    generator = torch.Generator().manual_seed(rows)
    values = torch.randn(rows, 203, dtype=torch.float64, generator=generator)
    old = values + 0.1 * torch.randn(rows, 203, dtype=torch.float64, generator=generator)
    lengths = torch.randint(0, 204, (rows,), generator=generator)
    lengths[:3] = torch.tensor([203, 0, 197])
    matrix = trace_matrix(203, 1.0, 0.97, style, floor)
    holes = torch.rand(rows, 203, generator=generator) > 0.2
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for mask in (torch.arange(203)[None, :] < lengths[:, None], holes):
        garbage, garbage_old = values.clone(), old.clone()
        for tensor in (garbage, garbage_old):
            noise = torch.rand(int((~mask).sum()), generator=generator) > 0.5
            tensor[~mask] = torch.where(noise, float("nan"), 1e30).double()
        x = garbage.to(dtype).requires_grad_()
        out = traced_sum(x, mask, 1.0, 0.97, style, floor)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), (values.to(dtype).double() * mask) @ matrix.T, **tol)
        grad = torch.randn(rows, 203, dtype=torch.float64, generator=generator)
        out.backward(grad.to(dtype))
        torch.testing.assert_close(x.grad.double(), (grad.to(dtype).double() @ matrix) * mask, **tol)

        based = traced_sum(garbage.to(dtype), mask, 1.0, 0.97, style, floor, offset=garbage_old.to(dtype))
        difference = (values.to(dtype) - old.to(dtype)).double() * mask
        real = mask.bool()  # log πold + S at real tokens; masked ones carry the padding's garbage, as torch's would
        expected = old.to(dtype).double() + difference @ matrix.T
        torch.testing.assert_close(based.double()[real], expected[real], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offset_form_is_offset_plus_traced_difference(dtype):
    """traced_sum(v, offset=b) = b + S(v − b) (ε-trace's log πold + Σ tr·(log πθ − log πold)), the difference and
    the sum in v's dtype; gradient S's adjoint, none into b. 10 × 77 (16 lanes: one block of 8 rows and 2 rows one by
    one; 9 blocks of positions and 5)."""
    generator = torch.Generator().manual_seed(3)
    logps = (-3 * torch.rand(10, 77, dtype=torch.float64, generator=generator)).to(dtype)
    old = (logps + 0.1 * torch.randn(10, 77, dtype=torch.float64, generator=generator).to(dtype)).requires_grad_()
    mask = torch.arange(77)[None, :] < torch.randint(1, 78, (10, 1), generator=generator)
    matrix = trace_matrix(77, 0.99, 0.95, "both", 0.001)
    x = logps.clone().requires_grad_()
    out = traced_sum(x, mask, 0.99, 0.95, "both", 0.001, offset=old)
    assert out.dtype == dtype
    difference = (logps - old.detach()).double()  # rounded to dtype, as torch takes it
    expected = old.detach().double() + (difference * mask) @ matrix.T
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.double(), expected, **tol)
    grad = torch.randn(10, 77, dtype=torch.float64, generator=generator).to(dtype)
    out.backward(grad)
    torch.testing.assert_close(x.grad.double(), (grad.double() @ matrix) * mask, **tol)
    assert old.grad is None


def test_empty_completions():
    empty = torch.zeros(2, 0)
    assert traced_sum(empty, empty, 1.0, 0.99, "both").shape == (2, 0)
    assert traced_sum_adjoint(empty, empty, 1.0, 0.99, "recent").shape == (2, 0)
    assert scale_by_credit_weights(empty, empty, 1.0, 0.99, "both").shape == (2, 0)


def test_long_sequences_do_not_overflow():
    # (γλ)^(−t) forms overflow float64 near t ≈ 70 000 at λ = 0.99; the scan uses only non-negative powers.
    length = 100_000
    values = torch.ones(1, length, dtype=torch.float64)
    mask = torch.ones_like(values)
    recent = traced_sum(values, mask, 1.0, 0.99, "recent")
    assert torch.isfinite(recent).all()
    t = torch.arange(length, dtype=torch.float64)
    torch.testing.assert_close(recent[0], (1 - 0.99 ** (t + 1)) / (1 - 0.99), rtol=1e-9, atol=1e-9)
    both = traced_sum(values, mask, 1.0, 0.99, "both")
    assert torch.isfinite(both).all() and (both >= recent).all()


def test_discounted_cumsum_is_the_recursion():
    values = torch.randn(3, 777, dtype=torch.float64)
    expected = torch.empty_like(values)
    running = torch.zeros(3, dtype=torch.float64)
    for t in range(values.shape[1]):  # ε_t = a ε_{t−1} + v_t (Eq. 15)
        running = 0.93 * running + values[:, t]
        expected[:, t] = running
    torch.testing.assert_close(discounted_cumsum(values, 0.93, chunk_size=16), expected)
    torch.testing.assert_close(discounted_cumsum(values, 0.93), expected)


@pytest.mark.parametrize("style", ["recent", "both"])
def test_padding_changes_nothing_and_masked_tokens_get_no_gradient(style):
    values = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 40, dtype=torch.float64)
    mask[0, 30:] = 0
    mask[1, 5] = 0
    out = traced_sum(values, mask, 1.0, 0.98, style, 0.01)
    (out * mask).sum().backward()
    assert torch.all(values.grad[mask == 0] == 0)
    assert torch.all(values.grad[mask == 1] != 0)

    padded = torch.cat([values.detach(), torch.randn(3, 25, dtype=torch.float64) * 1e6], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 25, dtype=torch.float64)], dim=1)
    out_padded = traced_sum(padded, padded_mask, 1.0, 0.98, style, 0.01)
    torch.testing.assert_close(out_padded[:, :40], out.detach())


def test_nan_in_masked_positions_does_not_leak():
    values = torch.tensor([[1.0, float("nan"), 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.isfinite(traced_sum(values, mask, 1.0, 0.5, "both")).all()


def test_permuting_the_batch_permutes_the_result():
    values = torch.randn(5, 50, dtype=torch.float64)
    mask = (torch.rand(5, 50) > 0.3).double()
    order = torch.randperm(5)
    out = traced_sum(values, mask, 1.0, 0.99, "both")
    torch.testing.assert_close(traced_sum(values[order], mask[order], 1.0, 0.99, "both"), out[order])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=1.0, lam=1.5, style="recent"), "trace_lambda"),
        (dict(gamma=1.0, lam=-0.1, style="recent"), "trace_lambda"),
        (dict(gamma=0.0, lam=0.5, style="recent"), "trace_gamma"),
        (dict(gamma=1.0, lam=0.5, style="forward"), "style"),
        (dict(gamma=1.0, lam=0.5, style="both", floor=2.0), "trace_floor"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trace_matrix(4, **kwargs)
    with pytest.raises(ValueError, match=match):
        traced_sum(torch.zeros(1, 4), torch.ones(1, 4), **kwargs)
