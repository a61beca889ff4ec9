"""`make demo`: the whole pipeline, small, on a CPU with no download.

1. Format SFT of the embedded SmolLM2-135M-Instruct on worked arithmetic solutions (qwen_math template).
2. GRPO and GRPO-λ (ε-trace, `both`, λ 0.99) from the SFT checkpoint: a few passes over a small fixed set of the
   built-in arithmetic task's training problems, in the same order for both methods. The mean reward of a pass is
   then the reward on the same problems each time, so the curves (a trailing mean over one pass) show learning
   rather than which problems a step happened to draw.
3. Evaluation of the SFT, GRPO and GRPO-λ models on the held-out arithmetic split and on the first problems of each
   benchmark of the evaluation suite shipped with the package, with vLLM where it runs.
4. Tables (training reward per pass, accuracy) in Markdown and the training curves (PNG).

Every stage is the same command a user runs (`make sft`, `make train`, `make evaluate`), launched here with the
demo's sizes, and writes under --output_dir (default data/demo). A finished stage is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from grpo_lambda.errors import exit_status
from grpo_lambda.evaluation.config import BACKENDS, EvalConfig
from grpo_lambda.evaluation.evaluate import evaluate
from grpo_lambda.evaluation.grades import GRADES
from grpo_lambda.evaluation.plots import plot_training
from grpo_lambda.evaluation.suite import BENCHMARKS
from grpo_lambda.methods import Method
from grpo_lambda.metrics_log import read_steps
from grpo_lambda.reruns import final_step

METHODS = (Method("grpo"), Method("eps_trace", "both", 0.99))
SIZES = {
    # SFT steps; RL: training problems, steps, prompts per step, completions per prompt, learning rate; evaluation:
    # arithmetic problems, suite problems each, new tokens
    "default": dict(
        sft_steps=20,
        train_problems=8,
        rl_steps=16,
        prompts=2,
        generations=8,
        learning_rate=1e-5,
        eval_problems=100,
        suite_problems=5,
        new_tokens=128,
    ),
    "small": dict(
        sft_steps=2,
        train_problems=2,
        rl_steps=1,
        prompts=2,
        generations=2,
        learning_rate=1e-5,
        eval_problems=4,
        suite_problems=1,
        new_tokens=16,
    ),
}


def run_stage(name: str, argv: list[str], folder: Path) -> None:
    if final_step(folder) is not None:  # its final model is saved (grpo_lambda.reruns)
        print(f"[demo] {name}: done already ({folder})", flush=True)
        return
    command = [sys.executable, "-m", "grpo_lambda.jobs.launch", *argv]
    print(f"[demo] {name}: {shlex.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


LAUNCHER_METHOD_FIELDS = ("loss_variant", "trace_style", "trace_lambda")  # make train's LOSS_VARIANT, TRACE_*


def method_flags(method: Method) -> tuple[list[str], str]:
    """The method as the launcher's method flags, which pick the default recipe of its kind (GRPO's has no trace
    settings, which GRPO would ignore and the launcher refuses), and its other config values as trainer flags."""
    config = method.config()
    launcher = [f"--{key}={config[key]}" for key in LAUNCHER_METHOD_FIELDS if key in config]
    rest = {key: value for key, value in config.items() if key not in LAUNCHER_METHOD_FIELDS}
    return launcher, " ".join(f"--{key} {'null' if value is None else value}" for key, value in rest.items())


def results_table(rows: dict[str, dict]) -> str:
    """Accuracy per benchmark and its macro average, each as "paper grade / corrected grade" (evaluation.grades)."""
    benchmarks = list(dict.fromkeys(b for results in rows.values() for b in results["benchmarks"]))
    lines = ["| model | " + " | ".join(benchmarks) + " | average |", "|---" * (len(benchmarks) + 2) + "|"]
    for name, results in rows.items():
        per = results["benchmarks"]
        cells = [" / ".join(f"{per[b][grade]['accuracy']:.3f}" for grade in GRADES) for b in benchmarks]
        average = " / ".join(f"{statistics.fmean(v[grade]['accuracy'] for v in per.values()):.3f}" for grade in GRADES)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {average} |")
    return "\n".join(lines)


def training_table(runs: dict[str, Path], steps_per_pass: int) -> str:
    """Mean training reward of each pass over the training problems (the same problems every pass), and the share
    of groups whose rewards all agree (no learning signal), per method."""
    lines = []
    for tag, run in runs.items():
        steps = read_steps(run / "metrics.jsonl")
        passes = [steps[i : i + steps_per_pass] for i in range(0, len(steps), steps_per_pass)]
        rewards = [statistics.fmean(r["reward"] for r in p) for p in passes]
        zero_std = statistics.fmean(r["frac_reward_zero_std"] for r in steps)
        lines.append(f"| {tag} | " + " → ".join(f"{v:.3f}" for v in rewards) + f" | {zero_std:.2f} |")
    header = "| method | training reward, mean of each pass | frac_reward_zero_std (mean over steps) |\n|---|---|---|"
    return header + "\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="data/demo")
    parser.add_argument("--size", default="default", choices=SIZES)
    parser.add_argument("--suite", default=None, help="evaluation suite (folder or Hub id); default: the shipped one")
    parser.add_argument(
        "--suite_problems", type=int, default=None, help="first N problems of each benchmark (default 5; 0: none)"
    )
    parser.add_argument("--backend", default="vllm", choices=BACKENDS)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    suite_problems = size["suite_problems"] if args.suite_problems is None else args.suite_problems
    out = Path(args.output_dir).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    sft = out / "sft"
    sft_flags = f"--max_steps {size['sft_steps']} --save_steps {size['sft_steps']} --output_dir {sft}"
    run_stage("1/4 format SFT", ["--stage", "sft", "--args", sft_flags], sft)
    runs = {}
    for method in METHODS:
        runs[method.tag] = out / method.tag
        launcher, method_args = method_flags(method)
        flags = (
            f"--prompt_template qwen_math --max_steps {size['rl_steps']} --save_steps {size['rl_steps']} "
            f"--num_generations {size['generations']} "
            f"--per_device_train_batch_size {size['prompts'] * size['generations']} "
            f"--learning_rate {size['learning_rate']} --max_train_samples {size['train_problems']} "
            f"--output_dir {runs[method.tag]} {method_args}"
        )
        run_stage(
            f"2/4 {method.tag}",
            ["--model", str(sft), "--dataset", "arithmetic", *launcher, "--args", flags],
            runs[method.tag],
        )

    print("[demo] 3/4 evaluation", flush=True)
    table_rows = {}
    for name, model in (("sft", sft), *runs.items()):
        common = dict(
            template="qwen_math",
            backend=args.backend,
            max_new_tokens=size["new_tokens"],
            max_model_len=1024,
            dtype="float32",
        )
        results = evaluate(
            EvalConfig(
                model=str(model),
                output_dir=str(out / "eval" / name / "arithmetic"),
                suite=None,
                benchmarks=["arithmetic"],
                limit=size["eval_problems"],
                **common,
            )
        )
        if suite_problems:
            suite_results = evaluate(
                EvalConfig(
                    model=str(model),
                    output_dir=str(out / "eval" / name / "suite"),
                    suite=args.suite,
                    benchmarks=list(BENCHMARKS),
                    limit=suite_problems,
                    **common,
                )
            )
            results["benchmarks"].update(suite_results["benchmarks"])
        table_rows[name] = results

    print("[demo] 4/4 tables and plots", flush=True)
    steps_per_pass = max(1, size["train_problems"] // size["prompts"])
    table = training_table(runs, steps_per_pass) + "\n\n" + results_table(table_rows)
    note = (
        f"SmolLM2-135M-Instruct (embedded), SFT {size['sft_steps']} steps, then {size['rl_steps']} RL steps each "
        f"({size['prompts']} of {size['train_problems']} training problems × {size['generations']} completions per "
        f"step, learning rate {size['learning_rate']:g}); "
        f"evaluation: {size['eval_problems']} held-out arithmetic problems"
        + (f" and the first {suite_problems} problems of each benchmark" if suite_problems else "")
        + ", greedy decoding, accuracy under the paper grade / the corrected grade.\n"
    )
    (out / "results.md").write_text(note + "\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(table_rows, indent=2) + "\n")
    plots = plot_training(list(runs.values()), out / "plots", window=steps_per_pass)
    print("\n" + table)
    print(f"\ntable: {out / 'results.md'}")
    for path in plots:
        print(f"plot:  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
