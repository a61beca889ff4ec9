"""How sure each evaluation number is: intervals, avg@k and pass@k, paired comparisons of two models.

Every function takes per-problem correctness — 0/1 from one greedy run (the paper's protocol), or the fraction of k
samples correct (`avg_at_k`, `pass_at_k`) — as a numpy array whose last axis is the problems (leading axes, if any,
are independent batches: one interval each). Benchmarks go in as `{benchmark: array}`. Nothing here reads files.

1. `accuracy_interval` / `macro_interval`: a 95 % interval for an accuracy, or for the macro average (the unweighted
   mean over benchmarks, the paper's AVG). Read it as the accuracies a model could have on the population of problems
   the benchmark was drawn from, given what it scored on these ones. At the suite's sizes it is wide: 6/30 on AIME24
   gives [9.5 %, 37.3 %], 100/500 on MATH500 [16.7 %, 23.7 %], and the macro average is good to about ±4 points.
2. `avg_at_k` / `pass_at_k`: per problem, the fraction of k samples correct, and the chance that at least one of k
   samples is correct (Chen et al. 2021's unbiased estimator from n ≥ k samples). Their mean over problems is the
   benchmark's avg@k / pass@k; pass them to (1) for an interval. avg@k estimates the same expected accuracy as one
   sample, with less noise per problem; the interval still counts problems, so it narrows only as far as the
   problems themselves agree.
3. `paired_difference` / `macro_paired_difference`: B − A over the same problems, with a 95 % interval. Pairing
   cancels what both models find easy or hard, so it is much narrower than two separate intervals; an interval that
   excludes 0 says B and A differ on this benchmark's population of problems. `mcnemar_exact`: the exact p-value of
   "A and B are equally good" from the problems exactly one of them solved (single greedy runs).
4. `runs_difference` / `macro_runs_difference`: the same with several runs per side (seeds), [runs, problems]
   arrays: a bootstrap over runs and problems, so the interval also counts how much a method varies from seed to seed.

Which interval, and why (tests/test_stats.py checks 93–97 % coverage in 1 000 seeded simulations of each): a plain
percentile bootstrap over problems covers the true accuracy of 30 problems 91 % of the time on average over
p in [0.1, 0.35] (82–95 %, exact binomial sums), and a plain paired interval 87 % with ~3 discordant problems. So:

- accuracies: Wilson's score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it for n ≤ 40) with the
  effective sample size n_eff = θ̂(1 − θ̂) / Var̂(θ̂) (Kish 1965; Korn & Graubard 1998), Var̂ being the bootstrap
  variance over problems (resampled within each benchmark for the macro) in closed form. For 0/1 answers on one
  benchmark n_eff = n and this is Wilson's interval itself; it stays inside [0, 1] and is not empty at 0/30.
- paired differences: Agresti & Min's (2005) Wald interval with half a pseudo-problem added to each cell of the
  2 × 2 table, per benchmark (for fractions of k samples, half a pseudo-sample: `samples=k`).
- several runs per side: a seeded percentile bootstrap over runs (shared across benchmarks: a run is one model) and
  problems (shared by A and B: the pairing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from statistics import NormalDist

import numpy as np

from grpo_lambda.errors import GRPOLambdaError

LEVEL = 0.95
RESAMPLES = 2000


def _normal_quantile(level: float) -> float:
    if not 0 < level < 1:
        raise GRPOLambdaError(f"interval level {level} is not in (0, 1): pass e.g. level=0.95")
    return NormalDist().inv_cdf((1 + level) / 2)


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


def _wilson(estimate, variance, fallback_n, z):
    """Wilson's score interval for a proportion `estimate` with n_eff = θ̂(1 − θ̂)/variance trials (fallback_n where
    the variance is 0: every problem scored alike, e.g. 0/30)."""
    safe_variance = np.where(variance > 0, variance, 1.0)
    n_eff = np.where(variance > 0, estimate * (1 - estimate) / safe_variance, fallback_n)
    centre = (estimate + z**2 / (2 * n_eff)) / (1 + z**2 / n_eff)
    half = z / (1 + z**2 / n_eff) * np.sqrt(estimate * (1 - estimate) / n_eff + z**2 / (4 * n_eff**2))
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def accuracy_interval(correct, level: float = LEVEL):
    """A `level` interval for the accuracy (mean over problems) of per-problem scores.

    Wilson's score interval (Wilson 1927, JASA 22:209; recommended for small n by Brown, Cai & DasGupta 2001,
    Stat. Sci. 16:101) with n_eff = θ̂(1 − θ̂)/Var̂, Var̂ = mean((x − θ̂)²)/n the bootstrap variance of the mean
    (the ideal bootstrap, no resampling noise). For 0/1 scores n_eff = n: Wilson's interval exactly.

    Args:
        correct: [..., problems] scores in [0, 1] (0/1, or fractions of k samples from `avg_at_k`).
    Returns:
        (low, high): floats for one benchmark, arrays [...] for a batch.
    """
    x = _fractions(correct, "correct")
    z = _normal_quantile(level)
    n = x.shape[-1]
    estimate = x.mean(axis=-1)
    low, high = _wilson(estimate, x.var(axis=-1) / n, n, z)
    return _plain(low), _plain(high)


def _benchmarks(per_benchmark: Mapping, name: str) -> dict[str, np.ndarray]:
    if not per_benchmark:
        raise GRPOLambdaError(f"{name} has no benchmarks: pass {{benchmark: per-problem scores}}")
    return {benchmark: _fractions(values, f"{name}[{benchmark!r}]") for benchmark, values in per_benchmark.items()}


def macro_interval(per_benchmark: Mapping[str, np.ndarray], level: float = LEVEL):
    """A `level` interval for the macro average: the unweighted mean of the benchmarks' accuracies (the paper's AVG).

    Wilson's interval as in `accuracy_interval`, with Var̂ = Σ_b Var̂_b / K² (problems resampled within each of the
    K benchmarks: the stratified bootstrap variance, Efron & Tibshirani 1993 §6.6), hence n_eff = θ̂(1 − θ̂)/Var̂; where
    Var̂ = 0, Kish's (1965) n_eff for equal weights, K² / Σ_b 1/n_b.

    Args:
        per_benchmark: {benchmark: [..., problems_b]} scores in [0, 1]; leading axes equal across benchmarks.
    Returns:
        (low, high): floats, or arrays [...] for a batch.
    """
    scores = _benchmarks(per_benchmark, "per_benchmark")
    z = _normal_quantile(level)
    k = len(scores)
    estimate = sum(x.mean(axis=-1) for x in scores.values()) / k
    variance = sum(x.var(axis=-1) / x.shape[-1] for x in scores.values()) / k**2
    kish_n = k**2 / sum(1 / x.shape[-1] for x in scores.values())
    low, high = _wilson(estimate, variance, kish_n, z)
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
    least one of k samples is correct, from n ≥ k samples of which c are correct:

        pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n−c+1}^{n} (1 − k/i)   (their numerically stable form)

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


def _agresti_min(a, b, samples: int):
    """Per benchmark: (B − A, the adjusted difference, its variance) for Agresti & Min's interval."""
    if samples < 1:
        raise GRPOLambdaError(
            f"samples={samples}: pass the number of samples behind each per-problem score (1 greedy)"
        )
    d = b - a
    n = d.shape[-1]
    # Half a pseudo-sample in each cell of the 2 × 2 table: two pseudo-problems, Σd² gains 2 · ½ · (1/samples)².
    adjusted = d.sum(axis=-1) / (n + 2)
    second_moment = ((d**2).sum(axis=-1) + 1 / samples**2) / (n + 2)
    return d.mean(axis=-1), adjusted, (second_moment - adjusted**2) / (n + 2)


def paired_difference(a, b, level: float = LEVEL, samples: int = 1):
    """B − A over the same problems, with a `level` interval.

    Agresti & Min (2005, Stat. Med. 24:729), "add 0.5 to each cell": with p̃_ij = (n_ij + ½)/(n + 2),
    d̃ = p̃_01 − p̃_10 and interval d̃ ± z·sqrt((p̃_01 + p̃_10 − d̃²)/(n + 2)). Written over per-problem differences
    d = b − a it is d̃ = Σd/(n + 2), Var̂ = ((Σd² + 1/samples²)/(n + 2) − d̃²)/(n + 2), which also takes fractions of
    `samples` samples per problem (half a pseudo-sample per cell).

    Args:
        a, b: [..., problems] scores in [0, 1], problem i of a and of b the same problem.
        samples: how many samples each score is the fraction of (1: greedy 0/1).
    Returns:
        (difference, low, high): the observed mean of b − a and the interval; floats, or arrays [...] for a batch.
    """
    a, b = _paired(a, b, "a", "b")
    z = _normal_quantile(level)
    difference, adjusted, variance = _agresti_min(a, b, samples)
    half = z * np.sqrt(variance)
    return _plain(difference), _plain(adjusted - half), _plain(adjusted + half)


def macro_paired_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], level=LEVEL, samples=1):
    """B − A of the macro average (unweighted mean over benchmarks), paired within each benchmark, with a `level`
    interval: Σ_b d̃_b / K ± z·sqrt(Σ_b Var̂_b) / K, d̃_b and Var̂_b from `paired_difference` (Agresti & Min 2005)
    and the benchmarks independent (problems resampled within each benchmark).

    Args:
        a, b: {benchmark: [..., problems_b]} with the same benchmarks and problems.
    Returns:
        (difference, low, high) as `paired_difference`.
    """
    a, b = _benchmarks(a, "a"), _benchmarks(b, "b")
    if a.keys() != b.keys():
        raise GRPOLambdaError(f"a has benchmarks {sorted(a)}, b has {sorted(b)}: compare the same benchmarks")
    z = _normal_quantile(level)
    parts = [_agresti_min(*_paired(a[name], b[name], f"a[{name!r}]", f"b[{name!r}]"), samples) for name in a]
    k = len(parts)
    difference = sum(part[0] for part in parts) / k
    adjusted = sum(part[1] for part in parts) / k
    half = z * np.sqrt(sum(part[2] for part in parts)) / k
    return _plain(difference), _plain(adjusted - half), _plain(adjusted + half)


def mcnemar_exact(a, b) -> float:
    """The exact two-sided McNemar p-value of "A and B solve as many problems": a binomial test of the discordant
    problems (McNemar 1947; exact form e.g. Fagerland, Lydersen & Laake 2013, BMC Med. Res. Methodol. 13:91).

    Of the m problems exactly one of A and B solved, B solved s; under the null s ~ Binomial(m, ½), and
    p = Σ_{x : P(x) ≤ P(s)·(1 + 10⁻⁷)} P(x), the sum of the outcomes no likelier than the observed one with the relative
    tolerance of scipy.stats.binomtest (two-sided). Computed exactly in integers; 1.0 when m = 0.

    Args:
        a, b: [problems] 0/1, problem i the same problem in both.
    """
    a, b = _paired(a, b, "a", "b")
    if a.ndim != 1 or not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise GRPOLambdaError("mcnemar_exact needs one greedy run per side: 0/1 per problem, shaped [problems]")
    b_only = int(((b == 1) & (a == 0)).sum())
    m = b_only + int(((a == 1) & (b == 0)).sum())
    observed = math.comb(m, b_only)
    # P(x) ≤ P(s)(1 + 10⁻⁷) ⇔ C(m, x) · 10⁷ ≤ C(m, s) · (10⁷ + 1): no rounding.
    tail = sum(math.comb(m, x) for x in range(m + 1) if math.comb(m, x) * 10**7 <= observed * (10**7 + 1))
    return float(min(Fraction(1), Fraction(tail, 2**m)))


def _runs(per_benchmark: Mapping, name: str) -> dict[str, np.ndarray]:
    scores = _benchmarks(per_benchmark, name)
    runs = {x.shape[:-1] for x in scores.values()}
    if any(x.ndim != 2 for x in scores.values()) or len(runs) != 1:
        raise GRPOLambdaError(f"{name} must be [runs, problems] per benchmark with the same runs: one row per seed")
    return scores


def _resample_counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """[resamples, size]: how often each of `size` items is drawn in each resample of `size` draws with replacement."""
    draws = rng.integers(0, size, size=(resamples, size)) + size * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * size).reshape(resamples, size)


def macro_runs_difference(a, b, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0):
    """B − A of the macro average with several runs (seeds) per side, with a `level` percentile bootstrap interval
    over runs and problems (a two-stage bootstrap: Davison & Hinkley 1997 §3.8; Bouthillier et al. 2021, "Accounting
    for variance in machine learning benchmarks"). Each resample draws A's runs and B's runs with replacement (the same
    runs for every benchmark: a run is one trained model) and each benchmark's problems with replacement (the same
    problems for A and B: the pairing); the statistic is the macro average of B's mean minus A's.

    Args:
        a, b: {benchmark: [runs, problems_b]} scores in [0, 1]; A and B may have different numbers of runs.
        seed: the bootstrap's numpy Generator seed (the interval is a function of the data and the seed).
    Returns:
        (difference, low, high): the observed difference of the macro averages over all runs, and the interval.
    """
    a, b = _runs(a, "a"), _runs(b, "b")
    if a.keys() != b.keys() or any(a[name].shape[1] != b[name].shape[1] for name in a):
        raise GRPOLambdaError("a and b must hold the same benchmarks and problems: pair runs problem by problem")
    if resamples < 1:
        raise GRPOLambdaError(f"resamples={resamples}: pass a positive number of bootstrap resamples (e.g. 2000)")
    _normal_quantile(level)
    rng = np.random.default_rng(seed)
    (runs_a, _), (runs_b, _) = next(iter(a.values())).shape, next(iter(b.values())).shape
    weights_a = _resample_counts(rng, runs_a, resamples) / runs_a  # [resamples, runs_a]
    weights_b = _resample_counts(rng, runs_b, resamples) / runs_b
    difference = 0.0
    statistic = np.zeros(resamples)
    for name in sorted(a):
        n = a[name].shape[1]
        problems = _resample_counts(rng, n, resamples) / n  # [resamples, problems]
        per_problem = weights_b @ b[name] - weights_a @ a[name]  # [resamples, problems]: B − A over drawn runs
        statistic += (per_problem * problems).sum(axis=1)
        difference += b[name].mean() - a[name].mean()
    k = len(a)
    low, high = np.quantile(statistic / k, [(1 - level) / 2, (1 + level) / 2])
    return difference / k, float(low), float(high)


def runs_difference(a, b, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0):
    """B − A on one benchmark with several runs (seeds) per side: `macro_runs_difference` of that one benchmark.

    Args:
        a, b: [runs, problems] scores in [0, 1].
    Returns:
        (difference, low, high).
    """
    return macro_runs_difference({"benchmark": a}, {"benchmark": b}, level, resamples, seed)
