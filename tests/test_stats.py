"""The statistics of evaluation numbers: coverage of the intervals (the acceptance), pass@k against enumeration,
McNemar against its definition, and the refusals."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.stats import (
    accuracy_interval,
    avg_at_k,
    macro_interval,
    macro_paired_difference,
    mcnemar_exact,
    paired_difference,
    pass_at_k,
    runs_difference,
)

SIMULATIONS = 1000
Z = NormalDist().inv_cdf(0.975)
SUITE_SIZES = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}


def covered(truth, low, high) -> float:
    return float(np.mean((low <= truth) & (truth <= high)))


# Coverage (the acceptance): 1 000 seeded simulated benchmarks with a known truth, all intervals computed at once.


# n = 30 at three accuracies near 0.2: a plain percentile bootstrap covers 0.946 exactly at p = 0.2 (a lattice point
# of k/30) but 0.897 at 0.17 and 0.910 at 0.23 (exact binomial sums), so one point alone would not tell them apart.
@pytest.mark.parametrize("problems, accuracy", [(30, 0.17), (30, 0.2), (30, 0.23), (83, 0.3), (500, 0.6)])
def test_accuracy_interval_covers_the_true_accuracy_95_percent_of_the_time(problems, accuracy):
    correct = (np.random.default_rng(problems).random((SIMULATIONS, problems)) < accuracy).astype(float)
    assert 0.93 <= covered(accuracy, *accuracy_interval(correct)) <= 0.97


def test_accuracy_interval_of_avg_at_k_covers_the_expected_accuracy():
    # 30 problems of difficulty q ~ Beta(0.4, 1.6) (mean 0.2, most problems near 0 or 1), 8 samples each.
    rng = np.random.default_rng(1)
    samples = rng.random((SIMULATIONS, 30, 8)) < rng.beta(0.4, 1.6, (SIMULATIONS, 30, 1))
    assert 0.93 <= covered(0.2, *accuracy_interval(avg_at_k(samples))) <= 0.97


def test_macro_interval_covers_the_true_macro_average_at_the_suites_sizes():
    rng = np.random.default_rng(2)
    accuracy = {"aime": 0.2, "amc": 0.45, "math": 0.7, "minerva": 0.3, "olympiad_bench": 0.35}
    correct = {b: (rng.random((SIMULATIONS, n)) < accuracy[b]).astype(float) for b, n in SUITE_SIZES.items()}
    assert 0.93 <= covered(np.mean(list(accuracy.values())), *macro_interval(correct)) <= 0.97


def simulate_pairs(rng, problems, both, a_only, b_only):
    """[simulations, problems] 0/1 for A and B from the 2 × 2 cell probabilities; the true B − A is b_only − a_only."""
    u = rng.random((SIMULATIONS, problems))
    a = u < both + a_only
    b = (u < both) | ((u >= both + a_only) & (u < both + a_only + b_only))
    return a.astype(float), b.astype(float)


@pytest.mark.parametrize(
    "problems, cells",
    [(30, (0.2, 0.1, 0.2)), (30, (0.15, 0.05, 0.1)), (83, (0.3, 0.08, 0.12)), (500, (0.55, 0.05, 0.09))],
)
def test_paired_difference_covers_the_true_difference_95_percent_of_the_time(problems, cells):
    a, b = simulate_pairs(np.random.default_rng(3), problems, *cells)
    _, low, high = paired_difference(a, b)
    assert 0.93 <= covered(cells[2] - cells[1], low, high) <= 0.97


def test_macro_paired_difference_covers_the_true_macro_difference():
    rng = np.random.default_rng(4)
    cells = {"aime": (0.15, 0.1, 0.15), "amc": (0.3, 0.08, 0.12), "math": (0.55, 0.05, 0.09)}
    cells |= {"minerva": (0.2, 0.06, 0.08), "olympiad_bench": (0.25, 0.05, 0.08)}
    pairs = {name: simulate_pairs(rng, SUITE_SIZES[name], *cells[name]) for name in SUITE_SIZES}
    _, low, high = macro_paired_difference({k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()})
    truth = np.mean([c[2] - c[1] for c in cells.values()])
    assert 0.93 <= covered(truth, low, high) <= 0.97


# The formulas against their textbook forms.


@pytest.mark.parametrize("problems", [1, 30, 83])
def test_accuracy_interval_of_0_1_answers_is_wilsons_interval(problems):
    # Wilson (1927) in counts: (x + z²/2)/(n + z²) ± z·sqrt(n)/(n + z²)·sqrt(p̂(1 − p̂) + z²/(4n)).
    for solved in range(problems + 1):
        correct = np.arange(problems) < solved
        p = solved / problems
        centre = (solved + Z**2 / 2) / (problems + Z**2)
        half = Z * math.sqrt(problems) / (problems + Z**2) * math.sqrt(p * (1 - p) + Z**2 / (4 * problems))
        assert accuracy_interval(correct) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_macro_interval_of_one_benchmark_is_its_accuracy_interval():
    correct = np.random.default_rng(5).random(83) < 0.4
    assert macro_interval({"amc": correct}) == pytest.approx(accuracy_interval(correct), abs=1e-12)


def test_paired_difference_of_0_1_answers_is_agresti_and_mins_interval():
    # Agresti & Min (2005): p̃_ij = (n_ij + ½)/(n + 2), d̃ = p̃_01 − p̃_10, d̃ ± z·sqrt((p̃_01 + p̃_10 − d̃²)/(n + 2)).
    a = np.array([1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0])
    b = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0, 0])
    n, a_only, b_only = len(a), int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    p01, p10 = (b_only + 0.5) / (n + 2), (a_only + 0.5) / (n + 2)
    half = Z * math.sqrt((p01 + p10 - (p01 - p10) ** 2) / (n + 2))
    difference, low, high = paired_difference(a, b)
    assert difference == pytest.approx((b_only - a_only) / n)
    assert (low, high) == pytest.approx((p01 - p10 - half, p01 - p10 + half), abs=1e-12)


def test_avg_at_k_is_the_fraction_of_samples_correct():
    correct = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert avg_at_k(correct).tolist() == [0.75, 0.0, 1.0]


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_equals_enumerating_every_k_subset_of_the_samples(n):
    for solved, k in itertools.product(range(n + 1), range(1, n + 1)):
        samples = [1] * solved + [0] * (n - solved)
        subsets = list(itertools.combinations(samples, k))
        brute_force = sum(any(subset) for subset in subsets) / len(subsets)
        assert pass_at_k(np.array([samples]), k)[0] == pytest.approx(brute_force, abs=1e-12)


def test_pass_at_k_stays_in_range_for_many_samples():
    samples = np.arange(1000)[:, None] > np.arange(1000)[None, :]  # problem i has i of 1 000 samples correct
    estimate = pass_at_k(samples, 100)
    assert np.all(np.diff(estimate) >= 0) and estimate[0] == 0 and estimate[-1] == 1
    # 1 − C(n−c, k)/C(n, k) in exact integers for c = 5.
    assert estimate[5] == pytest.approx(1 - math.comb(995, 100) / math.comb(1000, 100), rel=1e-12)


def test_pass_at_1_is_avg_at_1():
    samples = np.random.default_rng(6).random((50, 7)) < 0.3
    np.testing.assert_allclose(pass_at_k(samples, 1), avg_at_k(samples), atol=1e-12)


@pytest.mark.parametrize("k", [0, 5])
def test_pass_at_k_refuses_k_outside_1_to_n(k):
    with pytest.raises(GRPOLambdaError, match="1 <= k <= n") as raised:
        pass_at_k(np.ones((3, 4)), k)
    assert "\n" not in str(raised.value)


def mcnemar_by_hand(a_only: int, b_only: int) -> float:
    # Binomial(m, ½) is symmetric: the outcomes no likelier than s are the two tails beyond min(s, m − s), so
    # p = min(1, 2 · Σ_{x ≤ min(s, m−s)} C(m, x) / 2^m).
    m = a_only + b_only
    return min(1.0, 2 * sum(math.comb(m, x) for x in range(min(a_only, b_only) + 1)) / 2**m)


@pytest.mark.parametrize("a_only, b_only", [(0, 0), (0, 1), (1, 1), (2, 8), (8, 2), (5, 6), (0, 12), (30, 45)])
def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_problems(a_only, b_only):
    both, neither = 7, 4  # concordant problems change nothing
    a = np.array([1] * both + [0] * neither + [1] * a_only + [0] * b_only)
    b = np.array([1] * both + [0] * neither + [0] * a_only + [1] * b_only)
    assert mcnemar_exact(a, b) == pytest.approx(mcnemar_by_hand(a_only, b_only), rel=1e-12)
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)


@pytest.mark.parametrize("a_only, b_only", [(2, 8), (13, 4), (0, 5), (40, 61)])
def test_mcnemar_exact_matches_scipy_binomtest(a_only, b_only):
    stats = pytest.importorskip("scipy.stats")
    a = np.array([1] * a_only + [0] * b_only)
    expected = stats.binomtest(b_only, a_only + b_only, 0.5).pvalue
    assert mcnemar_exact(a, 1 - a) == pytest.approx(expected, rel=1e-9)


def test_runs_difference_is_seeded_and_brackets_the_observed_difference():
    rng = np.random.default_rng(7)
    a = (rng.random((3, 83)) < 0.4).astype(float)
    b = (rng.random((4, 83)) < 0.5).astype(float)
    result = runs_difference(a, b, seed=11)
    assert result == runs_difference(a, b, seed=11)
    difference, low, high = result
    assert difference == pytest.approx(b.mean() - a.mean()) and low < difference < high


def test_runs_difference_with_one_identical_run_per_side_is_zero():
    a = (np.random.default_rng(8).random((1, 30)) < 0.5).astype(float)
    assert runs_difference(a, a.copy()) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: accuracy_interval([0.5, 1.5]), "outside"),
        (lambda: accuracy_interval([]), "no problems"),
        (lambda: accuracy_interval([1, 0], level=95), "level"),
        (lambda: macro_interval({}), "no benchmarks"),
        (lambda: paired_difference([1, 0, 1], [1, 0]), "same problems"),
        (lambda: macro_paired_difference({"amc": [1]}, {"aime": [1]}), "same benchmarks"),
        (lambda: mcnemar_exact([0.5, 1], [1, 0]), "0/1"),
        (lambda: avg_at_k([[0.5, 1]]), "0/1"),
        (lambda: runs_difference([1, 0], [0, 1]), "runs, problems"),
        (lambda: runs_difference([[1, 0]], [[1, 0, 1]]), "same benchmarks and problems"),
    ],
)
def test_bad_inputs_are_refused_in_one_line(call, message):
    with pytest.raises(GRPOLambdaError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)
