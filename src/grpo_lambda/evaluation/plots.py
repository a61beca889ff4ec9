"""Training curves (the paper's Figures 3, 4 and C.*) and evaluation generation lengths (Figures 12–15), as PNG.

    python -m grpo_lambda.evaluation.plots --runs data/<model>/grpo/* [--results data/eval] --output_dir plots

Runs are grouped by model and training set (from the recipes' run folders `<model>/grpo/<dataset>_<method tag>`,
read by grpo_lambda.methods.RunFolder; other folders form one group), GRPO against every GRPO-λ run on one figure:
accuracy reward, KL to the reference and completion length against the training step, each smoothed with a trailing
mean over `--window` logged steps (the paper smooths over the last 20 iterations).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation.store import read_results
from grpo_lambda.methods import RunFolder  # noqa: E402
from grpo_lambda.metrics_log import read_steps, trailing_mean

CURVES = (("reward", "accuracy reward"), ("kl", "KL(π‖π_ref)"), ("completions/mean_length", "completion length"))


def describe(run_dir: Path) -> tuple[str, str]:
    """(group, label) of a run: the model and training set, and the method's tag."""
    run = RunFolder.find(run_dir.resolve())
    if run:
        return f"{run.model} on {run.dataset}", run.method.tag
    return "runs", run_dir.name


def plot_training(run_dirs: list[Path], output_dir: Path, window: int = 20) -> list[Path]:
    groups: dict[str, list[tuple[str, list[dict]]]] = defaultdict(list)
    for run_dir in run_dirs:
        group, label = describe(run_dir)
        groups[group].append((label, read_steps(run_dir / "metrics.jsonl")))
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, runs in sorted(groups.items()):
        figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
        for axis, (key, title) in zip(axes, CURVES, strict=True):
            for label, records in sorted(runs, key=lambda run: run[0] != "grpo"):
                points = [(r["step"], r[key]) for r in records if key in r]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                style = dict(color="black", linewidth=2.0) if label == "grpo" else dict(linewidth=1.2)
                axis.plot(steps, trailing_mean(list(values), window), label=label, **style)
            axis.set_title(title)
            axis.set_xlabel("training step")
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        figure.suptitle(f"{group} (trailing mean over {window} steps)")
        figure.tight_layout()
        path = output_dir / f"training_{re.sub(r'[^A-Za-z0-9.-]+', '_', group)}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def plot_generation_lengths(results_dir: Path, output_dir: Path) -> Path:
    """Mean evaluation generation length per benchmark, one bar per evaluated run (Figures 12–15)."""
    runs = []
    for path in sorted(results_dir.rglob("results.json")):
        results = read_results(path)
        runs.append((path.parent.relative_to(results_dir).as_posix() or path.parent.name, results["benchmarks"]))
    if not runs:
        raise GRPOLambdaError(f"no results.json under {results_dir}.")
    benchmarks = sorted({b for _, per in runs for b in per})
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(benchmarks)), 3.8))
    width = 0.8 / len(runs)
    for i, (label, per) in enumerate(runs):
        xs = [j + i * width for j in range(len(benchmarks))]
        axis.bar(xs, [per.get(b, {}).get("mean_generation_length", 0) for b in benchmarks], width, label=label)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(benchmarks))], benchmarks)
    axis.set_ylabel("mean generation length (tokens)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "generation_lengths.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="Training output folders (with metrics.jsonl).")
    parser.add_argument("--results", default=None, help="Folder searched for evaluation results.json files.")
    parser.add_argument("--output_dir", default="plots")
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs if (Path(r) / "metrics.jsonl").is_file()]
    if not runs and not args.results:
        raise GRPOLambdaError("give --runs <folders with metrics.jsonl> and/or --results <folder>.")
    paths = plot_training(runs, Path(args.output_dir), args.window) if runs else []
    if args.results:
        paths.append(plot_generation_lengths(Path(args.results), Path(args.output_dir)))
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
