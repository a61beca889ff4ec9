"""traced_sum, its adjoint and the credit weights against the dense matrix of Eq. 17–18, and their stated limits.

The comparison with the dense reference runs on a covering set rather than a full grid: both styles × eight
(γ, λ, ε) that reach every branch of the sums (λ = 0 and 1, γ < 1, a floor reached after hundreds of lags, one
reached after a few, the floor alone, ε = 1) × five shapes, from one token to past the scan's chunk of 32, plus
T = 2 048 (a second level of chunks); each case uses a mask with holes and a right-padded one (with a full and an
empty row), and checks every fast form at once: forward with and without autograd, with ε-trace's offset
(off-policy), the adjoint and the gradient, the credit weights and their scaling (on-policy). float32 and garbage
in the padding have their own tests.
"""

import itertools

import pytest
import torch

from grpo_lambda.traces import (
    TraceSpec,
    credit_weights,
    discounted_cumsum,
    scale_by_credit_weights,
    trace_matrix,
    traced_sum,
    traced_sum_adjoint,
)
from helpers import dense_adjoint, dense_traced_sum, masks_with_holes_and_padding

# (γ, λ, ε): λ = 0 and 1, γ < 1, a floor that the decay reaches after ~340 lags, one it reaches after 8, the floor
# alone (λ = 0: every off-diagonal weight is ε), and ε = 1 (every weight 1, whatever λ).
GAMMA_LAMBDA_FLOOR = [
    (1.0, 0.0, 0.0),
    (1.0, 0.5, 0.0),
    (0.97, 0.99, 0.0),
    (1.0, 1.0, 0.0),
    (1.0, 0.98, 1e-3),
    (0.9, 0.9, 0.2),
    (1.0, 0.0, 0.05),
    (1.0, 0.7, 1.0),
]
TRACES = [
    TraceSpec(g, lam, style, floor)
    for (g, lam, floor), style in itertools.product(GAMMA_LAMBDA_FLOOR, ["recent", "both"])
]
# one token; one chunk of the scan; a chunk + 1; odd, past the 0.2 floor; past the 1e-3 floor (342 lags)
SHAPES = [(1, 1), (3, 2), (4, 33), (5, 97), (2, 400)]
LONG = [TraceSpec(1.0, 0.99, style, floor) for style in ("recent", "both") for floor in (0.0, 0.01)]


def trace_id(trace: TraceSpec) -> str:
    return f"{trace.style}-g{trace.gamma:g}-l{trace.lam:g}-f{trace.floor:g}"


def tr_reference(t: int, lag: int, trace: TraceSpec) -> float:
    """tr(t, l) written straight from Eq. 2 / Eq. 17–18, in Python floats."""
    if lag == 0:
        return 1.0
    a = trace.gamma * trace.lam
    weight = a**lag if trace.style == "recent" else max(a**lag, a ** (t - lag))
    return max(trace.floor, weight)


@pytest.mark.parametrize("trace", TRACES, ids=trace_id)
def test_trace_matrix_matches_equation(trace):
    length = 23
    matrix = trace_matrix(length, trace)
    assert matrix.dtype == torch.float64 and matrix.shape == (length, length)
    expected = [[tr_reference(t, t - k, trace) if k <= t else 0.0 for k in range(length)] for t in range(length)]
    torch.testing.assert_close(matrix, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-300)
    assert trace_matrix(length, trace, device="meta").device.type == "meta"  # built where the log-probs are (CUDA)


def test_trace_matrix_limits():
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.equal(trace_matrix(6, TraceSpec(1.0, 0.0, "recent")), eye)  # λ = 0: GRPO, each token only itself
    ones = torch.tril(torch.ones(6, 6, dtype=torch.float64))
    assert torch.equal(trace_matrix(6, TraceSpec(1.0, 1.0, "recent")), ones)
    both = trace_matrix(6, TraceSpec(1.0, 0.0, "both"))  # (γλ)^0 = 1 keeps the first token in every row
    expected = eye.clone()
    expected[:, 0] = 1.0
    assert torch.equal(both, expected)


def test_hand_computed_example():
    # a = γλ = 0.5, T = 3.  recent row 2: v2 + 0.5 v1 + 0.25 v0.
    # both row 2: k=0 → max(0.5², 0.5⁰) = 1; k=1 → max(0.5¹, 0.5¹) = 0.5; k=2 → 1.
    values = torch.tensor([[4.0, 2.0, 1.0]], dtype=torch.float64)
    mask = torch.ones_like(values)
    recent = traced_sum(values, mask, TraceSpec(1.0, 0.5, "recent"))
    both = traced_sum(values, mask, TraceSpec(1.0, 0.5, "both"))
    assert recent.tolist() == [[4.0, 2.0 + 2.0, 1.0 + 1.0 + 1.0]]
    assert both.tolist() == [[4.0, 2.0 + 4.0, 1.0 + 1.0 + 4.0]]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal to float64 rounding of sums whose terms are as large as the largest result."""
    atol = 1e-9 * max(1.0, expected.abs().max().item()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=atol, msg=lambda m: f"{what}: {m}")


def check_against_dense(trace: TraceSpec, batch: int, length: int, seed: int, device: str = "cpu") -> None:
    """For a mask with holes and a right-padded one: the forward (with and without autograd, with an offset), the
    adjoint, the gradient, the credit weights (closed form and scan) and their scaling, all against W. The fast
    forms run on `device`; the dense reference on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, dtype=torch.float64, generator=generator)
    offset = values + 0.1 * torch.randn(batch, length, dtype=torch.float64, generator=generator)
    grad = torch.randn(batch, length, dtype=torch.float64, generator=generator)
    v, b, g = values.to(device), offset.to(device), grad.to(device)
    for kind, mask in masks_with_holes_and_padding(batch, length, generator).items():
        m = mask.to(device)

        def check(actual: torch.Tensor, expected: torch.Tensor, what: str, kind: str = kind) -> None:
            assert actual.device == v.device, what
            assert_matches(actual.detach().cpu(), expected, f"{kind} mask, {what}")

        dense = dense_traced_sum(values, mask, trace)
        check(traced_sum(v, m, trace), dense, "forward")
        x = v.clone().requires_grad_()
        out = traced_sum(x, m, trace)
        check(out, dense, "forward with autograd")
        (out * g).sum().backward()  # ∂(Σ g·S)/∂v = mask·(g @ W)
        adjoint = dense_adjoint(grad, mask, trace)
        check(x.grad, adjoint, "gradient")
        check(traced_sum_adjoint(g, m, trace), adjoint, "adjoint")

        shifted = offset + dense_traced_sum(values - offset, mask, trace)  # ε-trace off-policy: b + S(v − b)
        check(traced_sum(v, m, trace, offset=b), shifted, "offset")

        credit = dense_adjoint(mask, mask, trace)  # c_k = Σ_{t ≥ k, mask_t} tr(t, t − k): ε-trace on-policy
        check(credit_weights(m, trace), credit, "credit weights")
        check(scale_by_credit_weights(g, m, trace), credit * grad, "scaled gradient")


@pytest.mark.parametrize("batch,length", SHAPES)
@pytest.mark.parametrize("trace", TRACES, ids=trace_id)
def test_fast_forms_match_dense_matrix(trace, batch, length):
    check_against_dense(trace, batch, length, seed=length)


@pytest.mark.parametrize("trace", LONG, ids=trace_id)
def test_fast_forms_match_dense_matrix_at_long_length(trace):
    """T = 2 048: two levels of the chunked scan (T > 32²), and a floor reached after ~460 lags."""
    check_against_dense(trace, 2, 2048, seed=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU node)")
@pytest.mark.parametrize("trace", TRACES, ids=trace_id)
def test_fast_forms_on_cuda_match_dense_matrix(trace):
    """The same checks with the fast forms on a GPU, at a shape past one chunk and at two levels of chunks."""
    check_against_dense(trace, 5, 97, seed=97, device="cuda")
    check_against_dense(trace, 2, 2048, seed=1, device="cuda")


def test_float32_input_keeps_dtype_and_precision():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 2000, generator=generator)
    mask = torch.ones(2, 2000)
    trace = TraceSpec(1.0, 0.99, "both")
    out = traced_sum(values, mask, trace)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), dense_traced_sum(values, mask, trace), rtol=1e-6, atol=1e-5)


def test_float32_log_ratio_with_int_prefix_mask():
    """ε-trace's inputs as TRL gives them: float32 log πθ (with gradient) and log πold, an int32 right-padded mask."""
    generator = torch.Generator().manual_seed(0)
    logps = -3 * torch.rand(3, 500, dtype=torch.float64, generator=generator)
    old = logps + 0.05 * torch.randn(3, 500, dtype=torch.float64, generator=generator)
    mask = (torch.arange(500)[None, :] < torch.tensor([[500], [321], [7]])).int()
    trace = TraceSpec(1.0, 0.99, "both")
    x = logps.float().requires_grad_()
    out = traced_sum(x - old.float(), mask, trace)
    assert out.dtype == torch.float32
    expected = dense_traced_sum(x.detach().double() - old.float().double(), mask, trace)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-5)
    grad = torch.randn(3, 500, generator=generator)
    out.backward(grad)
    torch.testing.assert_close(x.grad.double(), dense_adjoint(grad, mask, trace), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("trace", [TraceSpec(1.0, 0.97, "both"), TraceSpec(1.0, 0.97, "recent", 0.01)], ids=trace_id)
def test_garbage_in_the_padding_reaches_no_output(trace, dtype):
    """NaN and 1e30 in the padding must not reach any output, forward or backward; with log πold as offset, and NaN in
    its padding too."""
    generator = torch.Generator().manual_seed(19)
    rows, length = 19, 203
    values = torch.randn(rows, length, dtype=torch.float64, generator=generator)
    old = values + 0.1 * torch.randn(rows, length, dtype=torch.float64, generator=generator)
    lengths = torch.randint(0, length + 1, (rows,), generator=generator)
    lengths[:3] = torch.tensor([length, 0, length - 6])
    holes = torch.rand(rows, length, generator=generator) > 0.2
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for mask in (torch.arange(length)[None, :] < lengths[:, None], holes):
        garbage, garbage_old = values.clone(), old.clone()
        for tensor in (garbage, garbage_old):
            noise = torch.rand(int((~mask).sum()), generator=generator) > 0.5
            tensor[~mask] = torch.where(noise, float("nan"), 1e30).double()
        x = garbage.to(dtype).requires_grad_()
        out = traced_sum(x, mask, trace)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), dense_traced_sum(values.to(dtype), mask, trace), **tol)
        grad = torch.randn(rows, length, dtype=torch.float64, generator=generator).to(dtype)
        out.backward(grad)
        torch.testing.assert_close(x.grad.double(), dense_adjoint(grad, mask, trace), **tol)

        based = traced_sum(garbage.to(dtype), mask, trace, offset=garbage_old.to(dtype))
        real = mask.bool()  # log πold + S at real tokens; masked ones carry the padding's garbage, as torch's would
        expected = old.to(dtype).double() + dense_traced_sum((values.to(dtype) - old.to(dtype)).double(), mask, trace)
        torch.testing.assert_close(based.double()[real], expected[real], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_offset_form_is_offset_plus_traced_difference(dtype):
    """traced_sum(v, offset=b) = b + S(v − b) (ε-trace's log πold + Σ tr·(log πθ − log πold)), the difference and
    the sum in v's dtype; gradient S's adjoint, none into b."""
    generator = torch.Generator().manual_seed(3)
    logps = (-3 * torch.rand(10, 77, dtype=torch.float64, generator=generator)).to(dtype)
    old = (logps + 0.1 * torch.randn(10, 77, dtype=torch.float64, generator=generator).to(dtype)).requires_grad_()
    mask = torch.arange(77)[None, :] < torch.randint(1, 78, (10, 1), generator=generator)
    trace = TraceSpec(0.99, 0.95, "both", 0.001)
    x = logps.clone().requires_grad_()
    out = traced_sum(x, mask, trace, offset=old)
    assert out.dtype == dtype
    difference = (logps - old.detach()).double()  # rounded to dtype, as torch takes it
    expected = old.detach().double() + dense_traced_sum(difference, mask, trace)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.double(), expected, **tol)
    grad = torch.randn(10, 77, dtype=torch.float64, generator=generator).to(dtype)
    out.backward(grad)
    torch.testing.assert_close(x.grad.double(), dense_adjoint(grad.double(), mask, trace), **tol)
    assert old.grad is None


def test_empty_completions():
    empty = torch.zeros(2, 0)
    trace = TraceSpec(1.0, 0.99, "both")
    assert traced_sum(empty, empty, trace).shape == (2, 0)
    assert traced_sum_adjoint(empty, empty, TraceSpec(1.0, 0.99, "recent")).shape == (2, 0)
    assert scale_by_credit_weights(empty, empty, trace).shape == (2, 0)


def test_long_sequences_do_not_overflow():
    # (γλ)^(−t) forms overflow float64 near t ≈ 70 000 at λ = 0.99; the scan uses only non-negative powers.
    length = 100_000
    values = torch.ones(1, length, dtype=torch.float64)
    mask = torch.ones_like(values)
    recent = traced_sum(values, mask, TraceSpec(1.0, 0.99, "recent"))
    assert torch.isfinite(recent).all()
    t = torch.arange(length, dtype=torch.float64)
    torch.testing.assert_close(recent[0], (1 - 0.99 ** (t + 1)) / (1 - 0.99), rtol=1e-9, atol=1e-9)
    both = traced_sum(values, mask, TraceSpec(1.0, 0.99, "both"))
    assert torch.isfinite(both).all() and (both >= recent).all()


def test_discounted_cumsum_is_the_recursion():
    values = torch.randn(3, 777, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.empty_like(values)
    running = torch.zeros(3, dtype=torch.float64)
    for t in range(values.shape[1]):  # ε_t = a ε_{t−1} + v_t (Eq. 15)
        running = 0.93 * running + values[:, t]
        expected[:, t] = running
    torch.testing.assert_close(discounted_cumsum(values, 0.93, chunk_size=16), expected)
    torch.testing.assert_close(discounted_cumsum(values, 0.93), expected)


@pytest.mark.parametrize("style", ["recent", "both"])
def test_padding_changes_nothing_and_masked_tokens_get_no_gradient(style):
    generator = torch.Generator().manual_seed(0)
    trace = TraceSpec(1.0, 0.98, style, 0.01)
    values = torch.randn(3, 40, dtype=torch.float64, generator=generator).requires_grad_()
    mask = torch.ones(3, 40, dtype=torch.float64)
    mask[0, 30:] = 0
    mask[1, 5] = 0
    out = traced_sum(values, mask, trace)
    (out * mask).sum().backward()
    assert torch.all(values.grad[mask == 0] == 0)
    assert torch.all(values.grad[mask == 1] != 0)

    padded = torch.cat([values.detach(), torch.randn(3, 25, dtype=torch.float64, generator=generator) * 1e6], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 25, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(traced_sum(padded, padded_mask, trace)[:, :40], out.detach())


def test_nan_in_masked_positions_does_not_leak():
    values = torch.tensor([[1.0, float("nan"), 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.isfinite(traced_sum(values, mask, TraceSpec(1.0, 0.5, "both"))).all()


def test_permuting_the_batch_permutes_the_result():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5, 50, dtype=torch.float64, generator=generator)
    mask = (torch.rand(5, 50, generator=generator) > 0.3).double()
    order = torch.randperm(5, generator=generator)
    trace = TraceSpec(1.0, 0.99, "both")
    out = traced_sum(values, mask, trace)
    torch.testing.assert_close(traced_sum(values[order], mask[order], trace), out[order])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(gamma=1.0, lam=1.5, style="recent"), "trace_lambda=1.5"),
        (dict(gamma=1.0, lam=-0.1, style="recent"), "trace_lambda=-0.1"),
        (dict(gamma=0.0, lam=0.5, style="recent"), "trace_gamma=0.0"),
        (dict(gamma=1.0, lam=0.5, style="forward"), "trace_style='forward'"),
        (dict(gamma=1.0, lam=0.5, style="both", floor=2.0), "trace_floor=2.0"),
    ],
)
def test_bad_parameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TraceSpec(**kwargs)


def test_trace_spec_is_frozen_and_gives_the_decay():
    trace = TraceSpec(0.9, 0.5, "both", 0.01)
    assert trace.decay == pytest.approx(0.45)
    with pytest.raises(AttributeError):
        trace.lam = 0.9
