"""`make reproduce-toy`: the command line of the toy studies on `credit_echo` (python -m experiments.reproduce_toy):
the SFT start, then the quick study (experiments/toy_benchmark.py), the factorial one (experiments/toy_factorial.py) or
the DAPO one (experiments/toy_dapo.py). docs/toy_benchmark.md describes them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from experiments import toy_benchmark, toy_dapo, toy_factorial
from experiments.toy import TASK_NAME
from experiments.toy_benchmark import LEARNING_RATE, SIZES, build_sft_model, quick_study
from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.layout import run_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=toy_benchmark.__doc__.splitlines()[0])
    parser.add_argument("--study", default="quick", choices=("quick", "factorial", "dapo"))
    parser.add_argument("--output_dir", default="data/toy")
    parser.add_argument("--size", default="default", choices=SIZES)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiply the RL steps and the last-N window (quick 1: 200 steps, factorial 3: 600, dapo 2: 400)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (quick 3, factorial 8, dapo 6)")
    parser.add_argument(
        "--workers", type=int, default=2, help="runs trained at once (one process each; 0: in this one)"
    )
    quick = parser.add_argument_group("quick study")
    quick.add_argument("--methods", default=None, help="comma-separated method tags (default: the quick set)")
    quick.add_argument("--no_lambda_098", action="store_true", help="skip the λ = 0.98 run of the best variant")
    quick.add_argument("--learning_rate", type=float, default=LEARNING_RATE, help="for every method")
    piloted = parser.add_argument_group("factorial and dapo studies")
    piloted.add_argument(
        "--pilot_seeds", type=int, default=None, help="pilot seeds per learning rate (factorial 2, dapo 1)"
    )
    piloted.add_argument("--pilot_steps", type=int, default=None, help="steps per pilot run (factorial 200, dapo 150)")
    piloted.add_argument(
        "--lr_grid", default=None, help="comma-separated learning rates (factorial 1e-4,3e-4,1e-3; dapo 1e-4,3e-4)"
    )
    args = parser.parse_args(argv)
    if args.scale is None:
        args.scale = {"factorial": toy_factorial.MAIN_SCALE, "dapo": toy_dapo.MAIN_SCALE}.get(args.study, 1.0)
    if args.study != "quick" and args.seeds is not None and args.seeds < 2:
        raise GRPOLambdaError(f"--seeds {args.seeds}: the {args.study} study's intervals need at least 2 seeds.")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    size = SIZES[args.size]
    out = Path(args.output_dir).resolve()
    started = time.time()
    print(f"[toy] 1/3 SFT of a tiny Qwen2 on {TASK_NAME} (at most {size['sft_steps']} steps)", flush=True)
    sft_dir = build_sft_model(out, size["sft_steps"], size["eval_problems"], threads=max(1, args.workers))
    sft = run_record(sft_dir)
    print(f"[toy] SFT model: exact-match rate {sft['test_accuracy_t1']:.2f} when sampling at T=1", flush=True)
    if args.study == "factorial":
        return toy_factorial.factorial_study(args, out, sft_dir, sft, size, started)
    if args.study == "dapo":
        return toy_dapo.dapo_study(args, out, sft_dir, sft, size, started)
    return quick_study(args, out, sft_dir, sft, size, started)


if __name__ == "__main__":
    sys.exit(exit_status(main))
