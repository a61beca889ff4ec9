"""Evaluation throughput: output tokens/s of vLLM and of the transformers fallback on the same model and problems,
side by side in one run, and grading throughput (completions/s).

    python scripts/bench_eval.py [--model embedded:SmolLM2-135M-Instruct] [--problems 32] [--max_new_tokens 128]

Both backends decode greedily in float32 (where their tokens agree) from the MATH500 problems of the suite, or from
the built-in arithmetic split when the suite is absent.
"""

import argparse
import tempfile
import time
from pathlib import Path

from grpo_lambda.evaluate import EvalConfig, TransformersBackend, VLLMBackend, load_suite, prompt_text
from grpo_lambda.grading import Grader
from grpo_lambda.models import resolve_model
from grpo_lambda.templates import extract_answer

SUITE = Path(__file__).resolve().parents[2] / "shared" / "data" / "evaluation_suite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--suite", default=str(SUITE))
    args = parser.parse_args()

    benchmark = "math" if Path(args.suite).is_dir() else "arithmetic"
    items = load_suite(args.suite if benchmark == "math" else None, [benchmark], args.problems)
    config = EvalConfig(
        model=args.model, output_dir=tempfile.mkdtemp(), suite=None, benchmarks=[benchmark],
        max_new_tokens=args.max_new_tokens, dtype="float32",
    )  # fmt: skip
    model_path = resolve_model(args.model)
    rows = []
    outputs = {}
    for backend_class in (VLLMBackend, TransformersBackend):
        start = time.perf_counter()
        backend = backend_class(config, model_path)
        load_s = time.perf_counter() - start
        prompts = [prompt_text(backend.tokenizer, item["problem"], "qwen_math") for item in items]
        start = time.perf_counter()
        completions = backend.generate(prompts, [])
        seconds = time.perf_counter() - start
        tokens = sum(n for _, n in completions)
        outputs[backend.name] = completions
        rows.append((backend.name, load_s, seconds, tokens, tokens / seconds))
        del backend

    grader = Grader()
    graded = [(extract_answer(text, "no") or "", item["golds"]) for (text, _), item in zip(outputs["vllm"], items)]
    grader(graded[:1])  # start the worker outside the timing
    start = time.perf_counter()
    grader(graded * 4)
    grading_rate = 4 * len(graded) / (time.perf_counter() - start)
    grader.close()

    same = sum(a == b for (a, _), (b, _) in zip(outputs["vllm"], outputs["transformers"]))
    print(f"\n{len(items)} {benchmark} problems, greedy, ≤ {args.max_new_tokens} new tokens, float32, {args.model}\n")
    print("| backend | start-up s | generation s | output tokens | tokens/s |")
    print("|---|---|---|---|---|")
    for name, load_s, seconds, tokens, rate in rows:
        print(f"| {name} | {load_s:.1f} | {seconds:.1f} | {tokens} | {rate:.1f} |")
    print(
        f"\nvLLM / transformers tokens/s: {rows[0][4] / rows[1][4]:.1f}×; identical completions: {same}/{len(items)}"
    )
    print(f"grading: {grading_rate:.0f} completions/s (math-verify in a worker process, per-item time bound)")


if __name__ == "__main__":
    main()
