"""The statistics of evaluation numbers against their textbook forms and the libraries that have them: Wilson
(statsmodels), Newcombe's intervals, Welch's t (scipy), pass@k against enumeration, McNemar against its definition,
and the refusals. Coverage — how often each interval holds the truth — is tests/test_coverage.py."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import confint_proportions_2indep

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.stats import (
    MIN_RUNS,
    PSEUDO_PROBLEM,
    accuracy_interval,
    avg_at_k,
    independent_difference,
    macro_interval,
    macro_paired_difference,
    macro_runs_difference,
    mcnemar_exact,
    paired_difference,
    pass_at_k,
    runs_difference,
)

Z = NormalDist().inv_cdf(0.975)


def wilson(successes: float, trials: float) -> tuple[float, float]:
    """Wilson (1927) in counts: (x + z²/2)/(n + z²) ± z·sqrt(n)/(n + z²)·sqrt(p̂(1 − p̂) + z²/(4n))."""
    p = successes / trials
    centre = (successes + Z**2 / 2) / (trials + Z**2)
    half = Z * math.sqrt(trials) / (trials + Z**2) * math.sqrt(p * (1 - p) + Z**2 / (4 * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def pseudo_variance(scores) -> float:
    """The variance of one problem's score over the problems plus a PSEUDO_PROBLEM-weighted problem at 0 and one at
    1, as a weighted list (the obvious form of stats._score_variance)."""
    values = [*map(float, scores), 0.0, 1.0]
    weights = [1.0] * len(scores) + [PSEUDO_PROBLEM, PSEUDO_PROBLEM]
    mean = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    return sum(w * (v - mean) ** 2 for w, v in zip(weights, values, strict=True)) / sum(weights)


@pytest.mark.parametrize("problems", [1, 30, 83])
def test_accuracy_interval_of_0_1_answers_is_wilsons_interval(problems):
    for solved in range(problems + 1):
        correct = np.arange(problems) < solved
        assert accuracy_interval(correct) == pytest.approx(wilson(solved, problems), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_accuracy_interval_of_fractions_is_wilsons_at_the_effective_number_of_problems(seed):
    rng = np.random.default_rng(seed)
    scores = rng.binomial(8, rng.beta(0.2, 1.8, 30)) / 8  # avg@8 on 30 problems, most never solved
    mean = scores.mean()
    n_eff = max(30, mean * (1 - mean) * 30 / pseudo_variance(scores))
    assert accuracy_interval(scores) == pytest.approx(wilson(mean * n_eff, n_eff), abs=1e-12)


def test_a_batch_is_each_row_on_its_own():
    rows = np.random.default_rng(1).binomial(4, 0.3, (5, 40)) / 4
    low, high = accuracy_interval(rows)
    assert np.array([accuracy_interval(row) for row in rows]) == pytest.approx(np.stack([low, high], axis=1))


def test_macro_interval_counts_a_benchmark_scored_0():
    """AIME 0/30 beside MATH 100/500: the macro's variance holds AIME's p̃(1 − p̃)/30 (p̃ = ¼/30.5), not 0 (the
    fault: a 0/30 benchmark added nothing, and the interval was as if AIME were known exactly)."""
    aime, math500 = np.zeros(30), np.arange(500) < 100
    variance = (pseudo_variance(aime) / 30 + pseudo_variance(math500) / 500) / 4
    mean = (0 + 0.2) / 2
    n_eff = mean * (1 - mean) / variance
    assert macro_interval({"aime": aime, "math": math500}) == pytest.approx(wilson(mean * n_eff, n_eff), abs=1e-12)
    assert pseudo_variance(aime) == pytest.approx((0.25 / 30.5) * (1 - 0.25 / 30.5))


def test_macro_interval_of_one_benchmark_is_its_accuracy_interval_and_of_all_zeros_kishs():
    correct = np.random.default_rng(5).random(83) < 0.4
    assert macro_interval({"amc": correct}) == pytest.approx(accuracy_interval(correct), abs=1e-12)
    kish = 4 / (1 / 30 + 1 / 83)
    assert macro_interval({"aime": np.zeros(30), "amc": np.zeros(83)}) == pytest.approx(wilson(0, kish), abs=1e-12)


def newcombe_paired(a, b) -> tuple[float, float, float]:
    """Newcombe (1998, Stat. Med. 17:2635) method 10 from the 2 × 2 table of paired 0/1 answers: Wilson limits of
    each margin and φ̂ = (n11·n00 − n10·n01)/sqrt(product of the margins), 0 when a margin is empty."""
    n = len(a)
    n11, n10 = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    n01, n00 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
    p_a, p_b = (n11 + n10) / n, (n11 + n01) / n
    (l_a, u_a), (l_b, u_b) = wilson(n11 + n10, n), wilson(n11 + n01, n)
    margins = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    phi = (n11 * n00 - n10 * n01) / math.sqrt(margins) if margins else 0.0
    d = p_b - p_a
    low = d - math.sqrt((p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    high = d + math.sqrt((u_b - p_b) ** 2 - 2 * phi * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2)
    return d, low, high


@pytest.mark.parametrize("seed", range(6))
def test_paired_difference_of_0_1_answers_is_newcombes_method_10(seed):
    rng = np.random.default_rng(seed)
    a = (rng.random(30) < 0.3).astype(int)
    b = np.where(rng.random(30) < 0.7, a, rng.random(30) < 0.4).astype(int)
    assert paired_difference(a, b) == pytest.approx(newcombe_paired(a, b), abs=1e-12)


def test_paired_difference_of_two_blank_runs_is_each_sides_wilson_limit():
    """Both 0/30: φ̂ = 0 and each lower Wilson limit is 0, so B − A lies within ± the upper limit of 0/30 (0.114)."""
    difference, low, high = paired_difference(np.zeros(30), np.zeros(30))
    upper = wilson(0, 30)[1]
    assert difference == 0 and (low, high) == pytest.approx((-upper, upper), abs=1e-12)


def test_macro_paired_difference_combines_the_macro_intervals_with_their_correlation():
    rng = np.random.default_rng(9)
    sizes = {"aime": 30, "amc": 83, "math": 500}
    a = {name: rng.binomial(4, rng.beta(0.4, 1.6, n)) / 4 for name, n in sizes.items()}
    b = {name: np.clip(x + rng.choice([0, 0.25], x.shape), 0, 1) for name, x in a.items()}
    covariance = sum(np.cov(a[k], b[k], ddof=0)[0, 1] / n for k, n in sizes.items())
    variances = [sum(np.var(side[k]) / n for k, n in sizes.items()) for side in (a, b)]
    r = covariance / math.sqrt(variances[0] * variances[1])
    (l_a, u_a), (l_b, u_b) = macro_interval(a), macro_interval(b)
    p_a, p_b = np.mean([x.mean() for x in a.values()]), np.mean([x.mean() for x in b.values()])
    low = p_b - p_a - math.sqrt((p_b - l_b) ** 2 - 2 * r * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2)
    high = p_b - p_a + math.sqrt((u_b - p_b) ** 2 - 2 * r * (u_b - p_b) * (p_a - l_a) + (p_a - l_a) ** 2)
    assert macro_paired_difference(a, b) == pytest.approx((p_b - p_a, low, high), abs=1e-12)


@pytest.mark.parametrize("solved", [(0, 0), (3, 9), (17, 12), (30, 28)])
def test_independent_difference_of_two_wilson_intervals_is_newcombes(solved):
    n = 30
    (x, y), estimates = solved, (solved[0] / n, solved[1] / n)
    _, low, high = independent_difference((estimates[0], *wilson(x, n)), (estimates[1], *wilson(y, n)))
    assert (low, high) == pytest.approx(confint_proportions_2indep(y, n, x, n, method="newcomb"), abs=1e-12)


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
    assert mcnemar_exact(a, b) == pytest.approx(mcnemar_by_hand(a_only, b_only), rel=1e-9)
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)


@pytest.mark.parametrize("runs", [(3, 3), (3, 5), (6, 4)])
def test_runs_difference_with_no_problem_to_problem_spread_is_welchs_interval(runs):
    """Each run scores every problem alike (a run is its level): the problems add nothing, and the interval is
    Welch's t interval of the runs' accuracies (scipy)."""
    rng = np.random.default_rng(sum(runs))
    levels_a, levels_b = rng.uniform(0.2, 0.4, runs[0]), rng.uniform(0.25, 0.45, runs[1])
    a, b = np.repeat(levels_a[:, None], 40, axis=1), np.repeat(levels_b[:, None], 40, axis=1)
    welch = scipy_stats.ttest_ind(levels_b, levels_a, equal_var=False).confidence_interval(0.95)
    difference, low, high = runs_difference(a, b)
    assert difference == pytest.approx(levels_b.mean() - levels_a.mean())
    assert (low, high) == pytest.approx((welch.low, welch.high), abs=1e-12)


def test_runs_difference_adds_the_problems_variance_component():
    """3 runs × 4 problems a side, B solving the problems A misses: the interaction mean squares by loops."""
    a = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1.0]])
    b = np.array([[1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 0, 0.0]])
    m, r, n = 3, 3, 4
    run_a, run_b = a.mean(axis=1), b.mean(axis=1)
    seeds = run_a.var(ddof=1) / m + run_b.var(ddof=1) / r

    def interaction(x):
        total = 0.0
        for j, i in itertools.product(range(x.shape[0]), range(n)):
            total += (x[j, i] - x[j].mean() - x[:, i].mean() + x.mean()) ** 2
        return total / ((x.shape[0] - 1) * (n - 1))

    spread = np.var(b.mean(axis=0) - a.mean(axis=0), ddof=1)
    problems = max(0.0, spread - interaction(a) / m - interaction(b) / r) / n
    variance = seeds + problems
    df = variance**2 / (
        (run_a.var(ddof=1) / m) ** 2 / (m - 1) + (run_b.var(ddof=1) / r) ** 2 / (r - 1) + problems**2 / 3
    )
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(variance)
    d = b.mean() - a.mean()
    assert problems > 0 and runs_difference(a, b) == pytest.approx((d, d - half, d + half), abs=1e-12)


def test_runs_difference_gives_no_interval_below_min_runs():
    a = (np.random.default_rng(8).random((MIN_RUNS - 1, 30)) < 0.5).astype(float)
    b = (np.random.default_rng(9).random((5, 30)) < 0.5).astype(float)
    assert runs_difference(a, b) == (pytest.approx(b.mean() - a.mean()), None, None)
    assert macro_runs_difference({"x": b}, {"x": a})[1:] == (None, None)


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


def test_the_examples_docs_evaluation_md_quotes():
    """docs/evaluation.md, How sure each number is: AIME 6/30, MATH500 100/500, the macro average at 30 % each."""
    assert np.round(100 * np.array(accuracy_interval(np.arange(30) < 6)), 1).tolist() == [9.5, 37.3]
    assert np.round(100 * np.array(accuracy_interval(np.arange(500) < 100)), 1).tolist() == [16.7, 23.7]
    sizes = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}
    at_30 = {name: np.arange(n) < round(0.3 * n) for name, n in sizes.items()}
    assert np.round(100 * np.array(macro_interval(at_30)), 1).tolist() == [26.1, 34.3]
