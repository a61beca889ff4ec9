"""How sure each evaluation number is: intervals, avg@k and pass@k, comparisons of two models or two methods.

Every function takes per-problem scores — 0/1 from one greedy run (the paper's protocol), or the fraction of k
samples correct (`avg_at_k`, `pass_at_k`) — as a numpy array whose last axis is the problems (leading axes, if any,
are independent batches: one interval each). Benchmarks go in as `{benchmark: array}`. Nothing here reads files.
Read every interval as the values the quantity could have on the population of problems each benchmark was drawn
from (and, for several runs per side, of runs); docs/evaluation.md ("How sure each number is") has the coverage
measured for each, by tests/test_coverage.py.

1. `accuracy_interval` / `macro_interval`: a 95 % interval for an accuracy, or for the macro average (the unweighted
   mean over benchmarks, the paper's AVG). Wilson's score interval (Wilson 1927; Brown, Cai & DasGupta 2001) with
   the effective number of problems n_eff = θ̂(1 − θ̂)/Var̂ (Kish 1965; Korn & Graubard 1998). Var̂ counts, in each
   benchmark, a quarter of a pseudo-problem scored 0 and a quarter scored 1 (`PSEUDO_PROBLEM`), so that a benchmark
   scored 0/30 still has a variance in the macro average, and a few problems that happen to agree (avg@k on 30 low
   scoring problems) do not pass for a sure thing. Why a quarter: over tests/test_coverage.py's regimes, weights of
   0.1 and 0.15 let the macro average's coverage fall to 0.908 and 0.925 (7 and 3 regimes below 0.93), a quarter to
   0.929 (1, within the simulations' error), and more only widens (½: avg@k above 0.97 in 117 of 378 regimes, a
   quarter in 79; `python tests/test_coverage.py --pseudo-problem W`). For 0/1 scores on one benchmark this is
   Wilson's interval.
2. `avg_at_k` / `pass_at_k`: per problem, the fraction of k samples correct, and the chance that at least one of k
   samples is correct (Chen et al. 2021's unbiased estimator from n ≥ k samples). Their mean over problems is the
   benchmark's avg@k / pass@k; pass them to (1) for an interval.
3. `paired_difference` / `macro_paired_difference`: B − A over the same problems, one run per side. Newcombe's (1998)
   hybrid score interval for paired proportions (his method 10; MOVER, Zou & Donner 2008): the two sides' intervals
   from (1), combined with the correlation of their per-problem scores. Pairing cancels what both models find easy
   or hard, so it is much narrower than two separate intervals. `mcnemar_exact`: the exact McNemar p-value.
4. `runs_difference` / `macro_runs_difference`: B − A of two methods with several runs (seeds) per side: a Welch
   t interval whose variance adds the seed-to-seed variance of each side's runs and the problems' variance
   (variance components by the method of moments; Satterthwaite's degrees of freedom). With fewer than `MIN_RUNS`
   runs on a side no interval is given (low and high are None): 2 seeds leave 1 degree of freedom per side, and the
   interval that still covers is then too wide to tell methods apart.
5. `independent_difference`: the difference of two estimates made on different samples of problems (Newcombe's
   1998 interval for independent proportions when both are Wilson intervals): `make tables`' ✓/✗ against the paper.

Hand-written here, and why: Wilson's interval is statsmodels' `proportion_confint`, the t quantiles and the binomial
test scipy's; what neither library has — Wilson at an effective n for the macro average, Newcombe's paired MOVER
for fractions of k samples and for the macro average, the variance components of two sides of runs × problems, and
Chen et al.'s pass@k — is written out below with its source.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t
from statsmodels.stats.proportion import proportion_confint

from grpo_lambda.errors import GRPOLambdaError

LEVEL = 0.95
PSEUDO_PROBLEM = 0.25  # weight of the pseudo-problem scored 0 and of the one scored 1, in each benchmark's variance
MIN_RUNS = 3  # runs per side below which `runs_difference` gives no interval


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise GRPOLambdaError(f"interval level {level} is not in (0, 1): pass e.g. level=0.95")


def _fractions(values, name: str) -> np.ndarray:
    """values as float64 [..., problems], checked to be per-problem scores in [0, 1]."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] == 0:
        raise GRPOLambdaError(f"{name} has no problems: pass one score in [0, 1] per problem (last axis)")
    if not np.all((array >= 0) & (array <= 1)):
        raise GRPOLambdaError(f"{name} has values outside [0, 1]: pass per-problem correctness (0/1 or a fraction)")
    return array


def _plain(array):
    return float(array) if np.ndim(array) == 0 else array


def _wilson(estimate, n_eff, level: float):
    """Wilson's score interval for a proportion `estimate` observed on `n_eff` trials (statsmodels' "wilson": the
    count need not be a whole number)."""
    low, high = proportion_confint(estimate * n_eff, n_eff, alpha=1 - level, method="wilson")
    return np.clip(low, 0, 1), np.clip(high, 0, 1)


def _score_variance(x: np.ndarray) -> np.ndarray:
    """[...] the variance of one problem's score, with `PSEUDO_PROBLEM` of a problem scored 0 and as much scored 1
    added to the n problems: s̃² = (Σ(x − p̃)² + w·p̃² + w·(1 − p̃)²)/(n + 2w), p̃ = (Σx + w)/(n + 2w). Never 0; for
    0/1 scores it is p̃(1 − p̃)."""
    w, n = PSEUDO_PROBLEM, x.shape[-1]
    shrunk = (x.sum(axis=-1) + w) / (n + 2 * w)
    squares = ((x - shrunk[..., None]) ** 2).sum(axis=-1) + w * shrunk**2 + w * (1 - shrunk) ** 2
    return squares / (n + 2 * w)


def accuracy_interval(correct, level: float = LEVEL):
    """A `level` interval for the accuracy (mean over problems) of per-problem scores.

    Wilson's score interval (Wilson 1927, JASA 22:209; Brown, Cai & DasGupta 2001, Stat. Sci. 16:101) on
    n_eff = max(n, θ̂(1 − θ̂)·n/s̃²) trials, s̃² the score variance with a quarter pseudo-problem at 0 and at 1
    (`_score_variance`). n_eff is at least n because a score in [0, 1] with mean θ varies at most as a 0/1 answer
    does (θ(1 − θ)): never wider than Wilson's interval on n problems, and for 0/1 scores exactly that.

    Args:
        correct: [..., problems] scores in [0, 1] (0/1, or fractions of k samples from `avg_at_k`).
    Returns:
        (low, high): floats for one benchmark, arrays [...] for a batch.
    """
    x = _fractions(correct, "correct")
    _check_level(level)
    n = x.shape[-1]
    estimate = x.mean(axis=-1)
    n_eff = np.maximum(n, estimate * (1 - estimate) * n / _score_variance(x))
    low, high = _wilson(estimate, n_eff, level)
    return _plain(low), _plain(high)


def _benchmarks(per_benchmark: Mapping, name: str) -> dict[str, np.ndarray]:
    if not per_benchmark:
        raise GRPOLambdaError(f"{name} has no benchmarks: pass {{benchmark: per-problem scores}}")
    return {benchmark: _fractions(values, f"{name}[{benchmark!r}]") for benchmark, values in per_benchmark.items()}


def macro_interval(per_benchmark: Mapping[str, np.ndarray], level: float = LEVEL):
    """A `level` interval for the macro average: the unweighted mean of the K benchmarks' accuracies (the paper's AVG).

    Wilson's interval on n_eff = θ̂(1 − θ̂)/Var̂ trials, Var̂ = Σ_b s̃²_b/n_b / K² (problems drawn independently
    within each benchmark; s̃²_b from `_score_variance`, so that a benchmark scored 0/30 still counts); where θ̂ is 0
    or 1, Kish's (1965) n_eff for equal weights, K²/Σ_b 1/n_b. One benchmark: its `accuracy_interval`.

    Args:
        per_benchmark: {benchmark: [..., problems_b]} scores in [0, 1]; leading axes equal across benchmarks.
    Returns:
        (low, high): floats, or arrays [...] for a batch.
    """
    scores = _benchmarks(per_benchmark, "per_benchmark")
    if len(scores) == 1:
        return accuracy_interval(next(iter(scores.values())), level)
    _check_level(level)
    k = len(scores)
    estimate = sum(x.mean(axis=-1) for x in scores.values()) / k
    variance = sum(_score_variance(x) / x.shape[-1] for x in scores.values()) / k**2
    kish_n = k**2 / sum(1 / x.shape[-1] for x in scores.values())
    spread = estimate * (1 - estimate)
    n_eff = np.where(spread > 0, spread / variance, kish_n)
    low, high = _wilson(estimate, n_eff, level)
    return _plain(low), _plain(high)


def _samples(correct) -> np.ndarray:
    array = np.asarray(correct)
    if array.ndim < 1 or array.shape[-1] == 0 or not np.isin(array, (0, 1)).all():
        raise GRPOLambdaError("correct must be 0/1 per sample, shaped [..., samples]: one column per sample")
    return array.astype(np.float64)


def avg_at_k(correct):
    """avg@k per problem: the fraction of its k samples that are correct (the mean over samples).

    Args:
        correct: [..., samples] 0/1 (e.g. [problems, k]).
    Returns:
        [...] fractions in [0, 1]; their mean over problems is the benchmark's avg@k.
    """
    return _plain(_samples(correct).mean(axis=-1))


def pass_at_k(correct, k: int):
    """pass@k per problem: Chen et al. 2021's (arXiv:2107.03374, §2.1) unbiased estimator of the chance that at
    least one of k samples is correct, from n ≥ k samples of which c are correct (no library has it; written in
    their numerically stable product form):

        pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n−c+1}^{n} (1 − k/i)

    Args:
        correct: [..., n] 0/1 (e.g. [problems, n samples]).
        k: 1 ≤ k ≤ n.
    Returns:
        [...] estimates in [0, 1]; their mean over problems is the benchmark's pass@k.
    """
    samples = _samples(correct)
    n = samples.shape[-1]
    if not 1 <= k <= n:
        raise GRPOLambdaError(
            f"pass@k needs 1 <= k <= n samples per problem, got k={k}, n={n}: lower k or sample more"
        )
    factors = 1 - k / np.arange(1, n + 1)  # factor for i = 1..n; a problem with c correct multiplies the last c
    wrong = n - samples.sum(axis=-1).astype(np.int64)
    # Π_{i=n−c+1}^{n} (1 − k/i) = Π_{i > wrong}; a factor is 0 for i = k, so it is 0 whenever wrong < k.
    suffix = np.concatenate([np.cumprod(factors[::-1])[::-1], [1.0]])  # suffix[j] = Π_{i=j+1}^{n}
    return _plain(1 - suffix[wrong])


def _paired(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _fractions(a, name_a), _fractions(b, name_b)
    if a.shape != b.shape:
        raise GRPOLambdaError(
            f"{name_a} {a.shape} and {name_b} {b.shape} are not over the same problems: pair them problem by problem"
        )
    return a, b


def _mover(estimate_a, interval_a, estimate_b, interval_b, correlation):
    """B − A with the interval of the method of variance estimates recovery (Zou & Donner 2008, Stat. Med. 27:1693;
    for two proportions Newcombe 1998, Stat. Med. 17:873 and 17:2635) from each side's interval and the correlation
    r of the two estimates:

        low  = d − sqrt((θ̂_B − l_B)² − 2r(θ̂_B − l_B)(u_A − θ̂_A) + (u_A − θ̂_A)²)
        high = d + sqrt((u_B − θ̂_B)² − 2r(u_B − θ̂_B)(θ̂_A − l_A) + (θ̂_A − l_A)²)
    """
    (low_a, high_a), (low_b, high_b) = interval_a, interval_b
    below_b, above_a = estimate_b - low_b, high_a - estimate_a
    above_b, below_a = high_b - estimate_b, estimate_a - low_a
    difference = estimate_b - estimate_a
    low = difference - np.sqrt(np.maximum(below_b**2 - 2 * correlation * below_b * above_a + above_a**2, 0))
    high = difference + np.sqrt(np.maximum(above_b**2 - 2 * correlation * above_b * below_a + below_a**2, 0))
    return difference, low, high


def paired_difference(a, b, level: float = LEVEL):
    """B − A over the same problems, one run per side, with a `level` interval: `macro_paired_difference` of one
    benchmark. For 0/1 answers it is Newcombe's (1998, Stat. Med. 17:2635) hybrid score interval for paired
    proportions (his method 10): each side's Wilson interval, r the phi coefficient of the 2 × 2 table.

    Args:
        a, b: [..., problems] scores in [0, 1], problem i of a and of b the same problem.
    Returns:
        (difference, low, high): the observed mean of b − a and the interval; floats, or arrays [...] for a batch.
    """
    a, b = _paired(a, b, "a", "b")
    return macro_paired_difference({"benchmark": a}, {"benchmark": b}, level)


def macro_paired_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], level: float = LEVEL):
    """B − A of the macro average (unweighted mean over benchmarks), paired within each benchmark, with a `level`
    interval: Newcombe's MOVER (`_mover`) from A's and B's `macro_interval` and the correlation of their macro
    averages over problems, r = Σ_b c_b/n_b / sqrt(Σ_b v^A_b/n_b · Σ_b v^B_b/n_b) (c_b the covariance of A's and
    B's per-problem scores, v the variances; r = 0 where either side's scores do not vary).

    Args:
        a, b: {benchmark: [..., problems_b]} with the same benchmarks and problems.
    Returns:
        (difference, low, high) as `paired_difference`.
    """
    a, b = _benchmarks(a, "a"), _benchmarks(b, "b")
    if a.keys() != b.keys():
        raise GRPOLambdaError(f"a has benchmarks {sorted(a)}, b has {sorted(b)}: compare the same benchmarks")
    pairs = {name: _paired(a[name], b[name], f"a[{name!r}]", f"b[{name!r}]") for name in a}
    _check_level(level)
    k = len(pairs)
    covariance = variance_a = variance_b = 0.0
    for x, y in pairs.values():
        dx, dy = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
        n = x.shape[-1]
        covariance = covariance + (dx * dy).mean(axis=-1) / n
        variance_a, variance_b = variance_a + (dx**2).mean(axis=-1) / n, variance_b + (dy**2).mean(axis=-1) / n
    product = variance_a * variance_b
    correlation = np.where(product > 0, covariance / np.sqrt(np.where(product > 0, product, 1)), 0.0)
    estimate_a = sum(x.mean(axis=-1) for x, _ in pairs.values()) / k
    estimate_b = sum(y.mean(axis=-1) for _, y in pairs.values()) / k
    difference, low, high = _mover(
        estimate_a, macro_interval(a, level), estimate_b, macro_interval(b, level), correlation
    )
    return _plain(difference), _plain(low), _plain(high)


def independent_difference(a: tuple, b: tuple):
    """B − A of two estimates made independently (on different draws of problems), each given as (estimate, low,
    high) at the same level: MOVER with r = 0 (`_mover`); for two Wilson intervals, Newcombe's (1998, Stat. Med.
    17:873) hybrid score interval for independent proportions (statsmodels' "newcomb").

    Returns:
        (difference, low, high): floats, or arrays for arrays.
    """
    difference, low, high = _mover(*(np.asarray(v, dtype=np.float64) for v in (a[0], a[1:], b[0], b[1:])), 0.0)
    return _plain(difference), _plain(low), _plain(high)


def mcnemar_exact(a, b) -> float:
    """The exact two-sided McNemar p-value of "A and B solve as many problems": of the m problems exactly one of A
    and B solved, B solved s; under the null s ~ Binomial(m, ½) (McNemar 1947; exact form e.g. Fagerland, Lydersen &
    Laake 2013, BMC Med. Res. Methodol. 13:91): scipy's two-sided `binomtest`. 1.0 when m = 0.

    Args:
        a, b: [problems] 0/1, problem i the same problem in both.
    """
    a, b = _paired(a, b, "a", "b")
    if a.ndim != 1 or not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise GRPOLambdaError("mcnemar_exact needs one greedy run per side: 0/1 per problem, shaped [problems]")
    b_only = int(((b == 1) & (a == 0)).sum())
    m = b_only + int(((a == 1) & (b == 0)).sum())
    return 1.0 if m == 0 else float(binomtest(b_only, m, 0.5).pvalue)


def _runs(per_benchmark: Mapping, name: str) -> dict[str, np.ndarray]:
    scores = _benchmarks(per_benchmark, name)
    runs = {x.shape[:-1] for x in scores.values()}
    if any(x.ndim != 2 for x in scores.values()) or len(runs) != 1:
        raise GRPOLambdaError(f"{name} must be [runs, problems] per benchmark with the same runs: one row per seed")
    return scores


def _interaction_mean_square(x: np.ndarray) -> float:
    """The residual mean square of a runs × problems table without replication (two-way ANOVA): what a run's score
    on a problem varies beyond the run's level and the problem's difficulty."""
    runs, problems = x.shape
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    return float((residual**2).sum() / ((runs - 1) * (problems - 1)))


def macro_runs_difference(a, b, level: float = LEVEL):
    """B − A of the macro average with several runs (seeds) per side: two methods, each trained several times,
    evaluated on the same problems, with a `level` interval; no interval (None) with fewer than `MIN_RUNS` runs on
    a side.

    A run's macro accuracy a_j (b_l) varies from seed to seed; the problems are a sample too. With D_i the per-problem
    difference of the two sides' mean scores and MS_A, MS_B the runs × problems interaction mean squares,

        Var̂ = s²(a_j)/m + s²(b_l)/r + Σ_b max(0, s²_b(D) − MS_A,b/m − MS_B,b/r)/n_b / K²

    (s²(a_j)/m already holds each run's interaction with the problems, which s²(D) holds too: subtracted once, the
    method of moments for variance components; e.g. Searle, Casella & McCulloch 1992, ch. 4), and the interval is
    d ± t_ν·sqrt(Var̂) with Satterthwaite's (1946) ν = Var̂² / Σ (part²/its degrees of freedom): m − 1, r − 1 and
    min n_b − 1. When the problem part is 0 this is Welch's interval for the runs' macro accuracies.

    Args:
        a, b: {benchmark: [runs, problems_b]} scores in [0, 1]; A and B may have different numbers of runs.
    Returns:
        (difference, low, high): the observed difference of the macro averages over all runs and the interval;
        low and high are None when A or B has fewer than MIN_RUNS runs.
    """
    a, b = _runs(a, "a"), _runs(b, "b")
    if a.keys() != b.keys() or any(a[name].shape[1] != b[name].shape[1] for name in a):
        raise GRPOLambdaError("a and b must hold the same benchmarks and problems: pair runs problem by problem")
    _check_level(level)
    k = len(a)
    runs_a = sum(x.mean(axis=1) for x in a.values()) / k  # [m] each run's macro accuracy
    runs_b = sum(y.mean(axis=1) for y in b.values()) / k
    m, r = len(runs_a), len(runs_b)
    difference = float(runs_b.mean() - runs_a.mean())
    if min(m, r) < MIN_RUNS:
        return difference, None, None
    seeds_a, seeds_b = runs_a.var(ddof=1) / m, runs_b.var(ddof=1) / r
    problems = 0.0
    for name in a:
        x, y = a[name], b[name]
        if x.shape[1] > 1:  # one problem has no spread to estimate
            spread = (y.mean(axis=0) - x.mean(axis=0)).var(ddof=1)
            excess = spread - _interaction_mean_square(x) / m - _interaction_mean_square(y) / r
            problems += max(0.0, excess) / x.shape[1]
    problems /= k**2
    variance = seeds_a + seeds_b + problems
    if variance == 0:
        return difference, difference, difference
    problem_df = max(1, min(x.shape[1] for x in a.values()) - 1)
    df = variance**2 / (seeds_a**2 / (m - 1) + seeds_b**2 / (r - 1) + problems**2 / problem_df)
    half = float(student_t.ppf((1 + level) / 2, df)) * np.sqrt(variance)
    return difference, float(difference - half), float(difference + half)


def runs_difference(a, b, level: float = LEVEL):
    """B − A on one benchmark with several runs (seeds) per side: `macro_runs_difference` of that one benchmark.

    Args:
        a, b: [runs, problems] scores in [0, 1].
    Returns:
        (difference, low, high); low and high None with fewer than MIN_RUNS runs on a side.
    """
    return macro_runs_difference({"benchmark": a}, {"benchmark": b}, level)
