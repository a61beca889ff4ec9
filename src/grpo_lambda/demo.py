"""`make demo`: the whole pipeline, small, on a CPU with no download.

1. Format SFT of the embedded SmolLM2-135M-Instruct on worked arithmetic solutions (qwen_math template).
2. GRPO and GRPO-λ (ε-trace, λ 0.99, `both`) from the SFT checkpoint on the built-in arithmetic task.
3. Evaluation of the SFT, GRPO and GRPO-λ models on the held-out arithmetic split (and on a slice of the paper's
   benchmark suite when one is available), with vLLM where it runs.
4. A results table (Markdown) and the training curves (PNG).

Every stage is the same command a user runs (`make sft`, `make train`, `make evaluate`), launched here with the
demo's sizes, and writes under --output_dir (default data/demo). A finished stage is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from grpo_lambda.evaluate import BENCHMARKS, EvalConfig, evaluate
from grpo_lambda.plots import plot_training

SIZES = {
    # SFT steps, RL steps, completions per prompt, arithmetic problems evaluated, suite problems each, new tokens
    "default": dict(sft_steps=60, rl_steps=12, generations=4, eval_problems=100, suite_problems=5, new_tokens=128),
    "small": dict(sft_steps=2, rl_steps=1, generations=2, eval_problems=4, suite_problems=1, new_tokens=16),
}


def run_stage(name: str, argv: list[str], done: Path) -> None:
    if done.exists():
        print(f"[demo] {name}: done already ({done.parent})", flush=True)
        return
    command = [sys.executable, "-m", "grpo_lambda.launch", *argv]
    print(f"[demo] {name}: {shlex.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)


def results_table(rows: dict[str, dict]) -> str:
    benchmarks = list(dict.fromkeys(b for results in rows.values() for b in results["benchmarks"]))
    lines = [
        "| model | " + " | ".join(benchmarks) + " | average | format rate |",
        "|---" * (len(benchmarks) + 3) + "|",
    ]
    for name, results in rows.items():
        per = results["benchmarks"]
        format_rate = sum(v["format_rate"] * v["n"] for v in per.values()) / sum(v["n"] for v in per.values())
        cells = [f"{per[b]['accuracy']:.3f}" for b in benchmarks]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {results['average']:.3f} | {format_rate:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="data/demo")
    parser.add_argument("--size", default="default", choices=SIZES)
    parser.add_argument(
        "--suite", default=str(Path(__file__).resolve().parents[3] / "shared" / "data" / "evaluation_suite")
    )
    parser.add_argument("--backend", default="auto", choices=("auto", "vllm", "transformers"))
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    out = Path(args.output_dir).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    sft = out / "sft"
    run_stage(
        "1/4 format SFT",
        [
            "--stage",
            "sft",
            "--args",
            f"--max_steps {size['sft_steps']} --save_steps {size['sft_steps']} --output_dir {sft}",
        ],
        sft / "grpo_lambda_sft.json",
    )
    runs = {}
    for method in ("grpo", "grpo-lambda"):
        runs[method] = out / method
        flags = (
            f"--prompt_template qwen_math --max_steps {size['rl_steps']} --save_steps {size['rl_steps']} "
            f"--num_generations {size['generations']} --per_device_train_batch_size {2 * size['generations']} "
            f"--output_dir {runs[method]}"
        )
        trace = ["--lambda", "0.99", "--style", "both", "--update", "trace"] if method == "grpo-lambda" else []
        run_stage(
            f"2/4 {method}",
            ["--model", str(sft), "--dataset", "arithmetic", "--method", method, *trace, "--args", flags],
            runs[method] / "model.safetensors",
        )

    print("[demo] 3/4 evaluation", flush=True)
    suite = args.suite if Path(args.suite).is_dir() else None
    table_rows = {}
    for name, model in (("sft", sft), ("grpo", runs["grpo"]), ("grpo-lambda", runs["grpo-lambda"])):
        common = dict(
            template="qwen_math",
            backend=args.backend,
            max_new_tokens=size["new_tokens"],
            max_model_len=1024,
            dtype="float32",
        )
        results = evaluate(
            EvalConfig(
                model=str(model), output_dir=str(out / "eval" / name / "arithmetic"), suite=None,
                benchmarks=["arithmetic"], limit=size["eval_problems"], **common,
            )
        )  # fmt: skip
        if suite:
            suite_results = evaluate(
                EvalConfig(
                    model=str(model), output_dir=str(out / "eval" / name / "suite"), suite=suite,
                    benchmarks=list(BENCHMARKS), limit=size["suite_problems"], **common,
                )
            )  # fmt: skip
            results["benchmarks"].update(suite_results["benchmarks"])
            accuracies = [v["accuracy"] for v in results["benchmarks"].values()]
            results["average"] = sum(accuracies) / len(accuracies)
        table_rows[name] = results

    print("[demo] 4/4 table and plots", flush=True)
    table = results_table(table_rows)
    note = (
        f"SmolLM2-135M-Instruct (embedded), SFT {size['sft_steps']} steps, then {size['rl_steps']} RL steps each; "
        f"arithmetic: {size['eval_problems']} held-out problems"
        + (f"; each benchmark: its first {size['suite_problems']} problems" if suite else "")
        + ". Accuracy under greedy decoding.\n"
    )
    (out / "results.md").write_text(note + "\n" + table + "\n")
    (out / "results.json").write_text(json.dumps(table_rows, indent=2) + "\n")
    plots = plot_training(list(runs.values()), out / "plots", window=3)
    print("\n" + table)
    print(f"\ntable: {out / 'results.md'}")
    for path in plots:
        print(f"plot:  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
