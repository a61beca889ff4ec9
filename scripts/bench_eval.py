"""Evaluation throughput: output tokens/s of vLLM and of the transformers fallback on the same model and problems,
side by side in one run, and grading throughput (completions/s).

    python scripts/bench_eval.py [--model embedded:SmolLM2-135M-Instruct] [--problems 32] [--max_new_tokens 128]

Both backends decode greedily in float32 (where their tokens agree) from the MATH500 problems of the suite (the
shipped one unless --suite names another). vLLM gets every prompt at once; the grading rate is for both grades (paper
and corrected, each in the grading worker) of each completion with its gold answer boxed at the end.
"""

import argparse
import tempfile
import time

from grpo_lambda.evaluation.backends import TransformersBackend, VLLMBackend, prompt_text
from grpo_lambda.evaluation.config import EvalConfig
from grpo_lambda.evaluation.grades import grade_sample, warm_up
from grpo_lambda.evaluation.suite import load_suite
from grpo_lambda.grading import Grader
from grpo_lambda.testbench.models import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--suite", default=None, help="Default: the shipped suite.")
    args = parser.parse_args()

    benchmark = "math"
    items = load_suite(args.suite, [benchmark], args.problems)
    config = EvalConfig(
        model=args.model,
        output_dir=tempfile.mkdtemp(),
        suite=args.suite,
        benchmarks=[benchmark],
        template="qwen_math",
        max_new_tokens=args.max_new_tokens,
        dtype="float32",
    )
    model_path = resolve_model(args.model)
    rows = []
    outputs = {}
    for backend_class in (VLLMBackend, TransformersBackend):
        start = time.perf_counter()
        backend = backend_class(config, model_path)
        load_s = time.perf_counter() - start
        prompts = [prompt_text(backend.tokenizer, item["problem"], "qwen_math") for item in items]
        start = time.perf_counter()
        completions = [None] * len(prompts)
        for position, text, count in backend.generate(prompts, [], args.max_new_tokens):
            completions[position] = (text, count)
        seconds = time.perf_counter() - start
        tokens = sum(n for _, n in completions)
        outputs[backend.name] = completions
        rows.append((backend.name, load_s, seconds, tokens, tokens / seconds))
        del backend

    # Grading: each completion with its problem's gold answer boxed at the end, so that both grades have an answer
    graded = [
        (f"{text}\nThe answer is \\boxed{{{item['golds'][0]}}}.", item)
        for (text, _), item in zip(outputs["vllm"], items)
    ]
    grader = Grader(warm_up=warm_up)
    grade = lambda text, item: grade_sample(grader, text, "qwen_math", item["golds"], item["paper_golds"])  # noqa: E731
    grade(*graded[0])  # start the worker outside the timing
    start = time.perf_counter()
    for _ in range(4):
        for text, item in graded:
            grade(text, item)
    grading_rate = 4 * len(items) / (time.perf_counter() - start)
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
    print(
        f"grading: {grading_rate:.0f} completions/s (paper and corrected grades in a worker process, per-item bound)"
    )


if __name__ == "__main__":
    main()
