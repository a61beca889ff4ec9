"""`make compare A=<evaluation folder(s)> B=<evaluation folder(s)>`: is B better than A, on the same problems?

    python -m grpo_lambda.evaluation.compare --a data/eval/grpo --b data/eval/eps_trace [--grade paper] [--output_dir DIR]
    python -m grpo_lambda.evaluation.compare --a grpo-s0 grpo-s1 grpo-s2 --b ours-s0 ours-s1 ours-s2   # seeds
    python -m grpo_lambda.evaluation.compare --a <run>/eval --b <run>/eval --pass_at 8   # sampled: pass@8, paired

Per benchmark and for the macro average (the paper's AVG): both accuracies, the difference B − A over the problems
both sides evaluated, and its 95 % interval. One run per side (the paper's protocol): two models, Newcombe's paired
interval over problems and, for greedy runs, the exact McNemar p-value of each benchmark. Several runs per side
(seeds): two methods, a t interval that counts the seed-to-seed spread and the problems, given only with at least
stats.MIN_RUNS (3) runs on each side — with fewer the table says so instead (grpo_lambda.evaluation.stats says what
each number means). Prints a markdown table, writes it to <output_dir>/compare.md and a forest plot to
<output_dir>/compare.png.

Folders are comparable only when they evaluated the same suite, template, token limits and problems; otherwise this
stops in one line naming the difference; greedy evaluations (the paper's protocol) compare only with greedy ones. A
sample's score for a problem is its grade's `correct`; where a folder holds several samples per problem (`sample`
index, `make evaluate SAMPLES=k`), the fraction correct of the k its results.json summarizes (avg@k), or with
`--pass_at k` its pass@k estimate. The table's first line and the plot say what is compared (greedy accuracy, avg@k
or pass@k, how the samples were drawn) and what the interval counts; a sweep's `<run>/eval` is named by its run.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.config import sample_counts
from grpo_lambda.evaluation.evaluate import problem_pass_at_k, problem_scores
from grpo_lambda.evaluation.grades import GRADES
from grpo_lambda.evaluation.store import read_lines, read_results

# What two evaluations must share to be compared problem by problem (their results.json `config`; a greedy
# evaluation, the paper's protocol, records no temperature and top_p: greedy is compared with greedy only).
SAME = ("suite", "template", "max_new_tokens", "max_model_len", "temperature", "top_p", "backend", "dtype")
MACRO = "average"


def load_evaluation(folder: Path, grade: str, pass_at: int | None = None) -> tuple[dict, dict[str, dict[int, float]]]:
    """(config, {benchmark: {problem index: score}}) of an evaluation folder; a score is the fraction of the problem's
    samples that `grade` marks correct (0 or 1 for one greedy sample), or with `pass_at` = k its pass@k estimate
    (stats.pass_at_k of its samples; each problem needs k or more)."""
    results_path, samples_path = folder / "results.json", folder / "samples.jsonl"
    if not results_path.is_file() or not samples_path.is_file():
        raise GRPOLambdaError(
            f"{folder} is not an evaluation folder (no results.json and samples.jsonl): run make evaluate."
        )
    config = read_results(results_path).get("config") or {}
    lines = read_lines(samples_path)
    counts = sample_counts(config.get("samples", 1), list(dict.fromkeys(s["benchmark"] for s in lines)))
    rows: dict[str, list[dict]] = defaultdict(list)
    for sample in lines:
        if sample.get("sample", 0) >= counts[sample["benchmark"]]:
            continue  # drawn for a larger SAMPLES than the one results.json summarizes
        if grade not in sample:
            raise GRPOLambdaError(
                f"{samples_path} has samples without the {grade} grade: `make regrade RESULTS={folder}`."
            )
        rows[sample["benchmark"]].append(sample)
    scores = {}
    for name, samples in rows.items():
        indices = sorted({sample["index"] for sample in samples})
        if pass_at is None:
            values = problem_scores(samples, grade)
        elif counts[name] < pass_at:
            raise GRPOLambdaError(
                f"{folder} has {counts[name]} sample(s) per {name} problem: pass@{pass_at} needs {pass_at} or more "
                f"(PASS_AT={counts[name]} or lower, or evaluate with SAMPLES={pass_at})."
            )
        else:
            values = problem_pass_at_k(samples, grade, pass_at)
        scores[name] = dict(zip(indices, values.tolist(), strict=True))
    return config, scores


def _check_comparable(folders: list[Path], configs: list[dict], scores: list[dict]) -> None:
    first = folders[0]
    for folder, config, score in zip(folders[1:], configs[1:], scores[1:], strict=True):
        for key in SAME:
            if config.get(key) != configs[0].get(key):
                raise GRPOLambdaError(
                    f"{first} and {folder} used different {key} ({configs[0].get(key)!r} vs {config.get(key)!r}): "
                    "compare evaluations made the same way."
                )
        if score.keys() != scores[0].keys():
            raise GRPOLambdaError(
                f"{first} evaluated {', '.join(scores[0])} and {folder} {', '.join(score)}: compare the same benchmarks."
            )
        for name in score:
            if score[name].keys() != scores[0][name].keys():
                raise GRPOLambdaError(
                    f"{first} and {folder} evaluated different {name} problems ({len(scores[0][name])} vs "
                    f"{len(score[name])}; another LIMIT?): compare evaluations of the same problems."
                )


def compare(a: list[Path], b: list[Path], grade: str = "paper", pass_at: int | None = None) -> list[dict]:
    """One row per benchmark and one for the macro average: n, accuracy of A and B (mean over runs), B − A, its
    interval, and (one run per side) McNemar's p. `pass_at` = k compares each problem's pass@k estimate instead of
    its fraction of samples correct (greedy: its 0/1 answer)."""
    if grade not in GRADES:
        raise GRPOLambdaError(f"grade {grade!r} is not one of {', '.join(GRADES)}.")
    if pass_at is not None and (isinstance(pass_at, bool) or not isinstance(pass_at, int) or pass_at < 1):
        raise GRPOLambdaError(f"pass_at={pass_at!r}: give k of pass@k, a whole number of samples, at least 1.")
    folders = [Path(f) for f in [*a, *b]]
    seen: dict[Path, Path] = {}
    for folder in folders:
        if folder.resolve() in seen:
            raise GRPOLambdaError(
                f"{folder} is given twice ({seen[folder.resolve()]}): compare two different evaluations."
            )
        seen[folder.resolve()] = folder
    loaded = [load_evaluation(folder, grade, pass_at) for folder in folders]
    _check_comparable(folders, [c for c, _ in loaded], [s for _, s in loaded])
    benchmarks = list(loaded[0][1])
    runs_a = {n: np.array([list(s[n].values()) for _, s in loaded[: len(a)]]) for n in benchmarks}  # [runs, problems]
    runs_b = {n: np.array([list(s[n].values()) for _, s in loaded[len(a) :]]) for n in benchmarks}
    single = len(a) == len(b) == 1
    # k samples per problem (make evaluate SAMPLES=k): scores are fractions of k; McNemar's test is for single samples
    greedy = single and pass_at is None and all(config.get("samples", 1) == 1 for config, _ in loaded)
    greedy &= all(np.isin(runs_a[n], (0, 1)).all() and np.isin(runs_b[n], (0, 1)).all() for n in benchmarks)
    rows = []
    for name in benchmarks:
        if single:
            difference, low, high = stats.paired_difference(runs_a[name][0], runs_b[name][0])
        else:
            difference, low, high = stats.runs_difference(runs_a[name], runs_b[name])
        rows.append(
            {
                "benchmark": name,
                "n": runs_a[name].shape[1],
                "a": float(runs_a[name].mean()),
                "b": float(runs_b[name].mean()),
                "difference": float(difference),
                "low": None if low is None else float(low),
                "high": None if high is None else float(high),
                "mcnemar_p": stats.mcnemar_exact(runs_a[name][0], runs_b[name][0]) if greedy else None,
            }
        )
    if len(benchmarks) > 1:
        if single:
            macro = stats.macro_paired_difference(
                {n: v[0] for n, v in runs_a.items()}, {n: v[0] for n, v in runs_b.items()}
            )
        else:
            macro = stats.macro_runs_difference(runs_a, runs_b)
        rows.append(
            {
                "benchmark": MACRO,
                "n": sum(row["n"] for row in rows),
                "a": float(np.mean([row["a"] for row in rows])),
                "b": float(np.mean([row["b"] for row in rows])),
                "difference": float(macro[0]),
                "low": None if macro[1] is None else float(macro[1]),
                "high": None if macro[2] is None else float(macro[2]),
                "mcnemar_p": None,
            }
        )
    return rows


def interval_kind(runs_a: int, runs_b: int) -> str:
    """What the interval of a comparison of `runs_a` against `runs_b` runs counts, in one line."""
    if runs_a == runs_b == 1:
        return "95 % interval over problems (Newcombe's paired interval: these two models)"
    if min(runs_a, runs_b) < stats.MIN_RUNS:
        return (
            f"no interval: {runs_a} run(s) of A and {runs_b} of B; one that counts how methods vary from seed to seed "
            f"needs {stats.MIN_RUNS} or more runs per side (docs/evaluation.md, How sure each number is)"
        )
    return "95 % t interval over seeds and problems (these two methods)"


def measure(configs: list[dict], pass_at: int | None = None) -> str:
    """What a comparison of evaluations with these results.json configs compares, in words: the greedy accuracy
    (the paper's protocol), avg@k, or pass@k, with k and how the samples were drawn."""
    first = configs[0]
    if not first.get("temperature"):  # compare refuses greedy against sampled (SAME)
        return "greedy accuracy (one completion per problem)"
    ks = " / ".join(dict.fromkeys(str(config.get("samples", 1)) for config in configs))
    drawn = f"{ks} samples per problem at temperature {first['temperature']}, top_p {first['top_p']}"
    return f"pass@{pass_at} ({drawn})" if pass_at else f"avg@k ({drawn})"


def render(
    rows: list[dict], label_a: str, label_b: str, grade: str, kind: str | None = None, compared: str | None = None
) -> str:
    """The markdown table (accuracies and differences in points); `kind`: `interval_kind`'s line (one run per
    side when left out); `compared`: `measure`'s words (the accuracy when left out)."""
    lines = [
        f"{grade} grade, {compared or 'accuracy'}: B = {label_b} minus A = {label_a}; {kind or interval_kind(1, 1)}",
        "",
        "| benchmark | n | A | B | B − A | 95 % interval | McNemar p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = "" if row["mcnemar_p"] is None else f"{row['mcnemar_p']:.3g}"
        interval = "—" if row["low"] is None else f"[{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"
        lines.append(
            f"| {row['benchmark']} | {row['n']} | {100 * row['a']:.1f} | {100 * row['b']:.1f} | "
            f"{100 * row['difference']:+.1f} | {interval} | {p} |"
        )
    return "\n".join(lines)


def forest_plot(rows: list[dict], title: str, path: Path, compared: str = "accuracy") -> Path:
    """Each benchmark's B − A (points) with its interval, the macro average last, a line at 0; the axis says what
    is compared (`measure`'s words, up to the bracket) and which interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.7))
    positions = list(range(len(rows)))[::-1]
    for y, row in zip(positions, rows, strict=True):
        colour = "black" if row["benchmark"] == MACRO else "tab:blue"
        no_interval = row["low"] is None
        axis.errorbar(
            100 * row["difference"],
            y,
            xerr=None
            if no_interval
            else [[100 * (row["difference"] - row["low"])], [100 * (row["high"] - row["difference"])]],
            fmt="D" if row["benchmark"] == MACRO else "o",
            color=colour,
            capsize=3,
        )
    axis.axvline(0, color="grey", linewidth=0.8, linestyle="--")
    axis.set_yticks(positions, [f"{row['benchmark']} (n={row['n']})" for row in rows])
    note = f"no interval: fewer than {stats.MIN_RUNS} runs a side" if rows[0]["low"] is None else "95 % interval"
    axis.set_xlabel(f"B − A, {compared.split(' (')[0]} in points ({note})")
    axis.set_title(textwrap.fill(title, 80), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def label(folder: str | Path) -> str:
    """How a folder is named in the table and the plot: by its run where it is a run's evaluation (a sweep's
    `<run folder>/eval`, which would otherwise read "eval" on both sides), else by its name."""
    path = Path(folder).resolve()
    return path.parent.name if path.name == "eval" else path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", required=True, help="Evaluation folder(s) of A (several: one per seed).")
    parser.add_argument("--b", nargs="+", required=True, help="Evaluation folder(s) of B.")
    parser.add_argument("--grade", default="paper", choices=GRADES)
    parser.add_argument("--pass_at", type=int, default=None, help="Compare pass@k (default: avg@k, greedy: accuracy).")
    parser.add_argument("--output_dir", default="plots", help="Writes compare.md and compare.png into it.")
    args = parser.parse_args(argv)
    rows = compare(args.a, args.b, args.grade, args.pass_at)
    configs = [read_results(Path(folder) / "results.json").get("config") or {} for folder in [*args.a, *args.b]]
    compared = measure(configs, args.pass_at)
    label_a, label_b = (" + ".join(label(folder) for folder in side) for side in (args.a, args.b))
    kind = interval_kind(len(args.a), len(args.b))
    table = render(rows, label_a, label_b, args.grade, kind, compared)
    print(table)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "compare.md").write_text(table + "\n")
    title = f"{label_b} − {label_a}: {args.grade} grade, {compared}; {kind.split(' (')[0]}"
    png = forest_plot(rows, title, output / "compare.png", compared)
    print(f"\nwrote {output / 'compare.md'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
