"""Evaluation on AIME24, AMC, MATH500, MinervaMath and OlympiadBench with the understand-r1-zero protocol.

    python -m grpo_lambda.evaluation.evaluate --model <checkpoint | hub id> [--template qwen_math|r1|no] --output_dir <dir>
    python -m grpo_lambda.evaluation.evaluate --regrade <dir> [--template ..] [--suite ..]

Greedy decoding (temperature 0), at most 3 000 new tokens within a 4 096-token model length, every prompt in flight
in one vLLM engine (vLLM schedules them); where vLLM cannot start, the evaluation stops and says so: the
transformers `generate` backend (about 20× slower) runs only when chosen (`--backend transformers`). Each sample is
graded and written to `samples.jsonl` as soon as it finishes, so an interrupted evaluation resumes without regenerating what it finished. Every sample gets
two grades (grades.py): `paper` (understand-r1-zero's grader, rule for rule) and `corrected`; `results.json` holds
both per benchmark (accuracy, format rate), their macro averages over benchmarks (unweighted, as the paper's AVG)
and generation lengths. `--regrade` re-scores an existing samples.jsonl with the current graders, generating nothing.
The suite defaults to the copy shipped in the package (DEFAULT_SUITE); the template to the model's recipe template.

This module runs an evaluation and its command line; the pieces are the suite (`suite`), the request (`config`),
the backends (`backends`) and the samples store (`store`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.backends import make_backend, model_folder, prompt_text
from grpo_lambda.evaluation.config import BACKENDS, EvalConfig
from grpo_lambda.evaluation.grades import GRADES, grade_sample, warm_up
from grpo_lambda.evaluation.store import append, read_lines, read_results, read_samples, rewrite
from grpo_lambda.evaluation.suite import BENCHMARKS, DEFAULT_SUITE, load_suite
from grpo_lambda.grading import Grader
from grpo_lambda.inputs import check_model, check_output_folder
from grpo_lambda.records import replace_file
from grpo_lambda.templates import R1_STOP, TEMPLATES

logger = logging.getLogger(__name__)


def graded(grader: Grader, sample: dict, item: dict, template: str) -> dict:
    """`sample` with its template, gold answers and both grades (grades.grade_sample) set."""
    verdicts = grade_sample(grader, sample["completion"], template, item["golds"], item["paper_golds"])
    return {**sample, "template": template, "golds": item["golds"], "paper_golds": item["paper_golds"], **verdicts}


def problem_scores(rows: list[dict], grade: str) -> np.ndarray:
    """Per problem, the fraction of its samples that `grade` marks correct (0 or 1 for one greedy sample), in problem
    order: what the intervals of grpo_lambda.evaluation.stats take."""
    correct: dict[int, list[bool]] = {}
    for sample in rows:
        correct.setdefault(sample["index"], []).append(bool(sample[grade]["correct"]))
    return np.array([np.mean(correct[index]) for index in sorted(correct)])


def summarize(samples: list[dict], config: EvalConfig, backend: str | None) -> dict:
    """results.json: per benchmark and grade the accuracy with its 95 % interval over problems and the format rate;
    the macro average over benchmarks (the paper's AVG) with its interval; generation lengths."""
    per_benchmark, scores = {}, {grade: {} for grade in GRADES}
    for benchmark in config.benchmarks:
        rows = [s for s in samples if s["benchmark"] == benchmark]
        if not rows:
            continue
        lengths = [s["tokens"] for s in rows if s.get("tokens") is not None]
        for grade in GRADES:
            scores[grade][benchmark] = problem_scores(rows, grade)
        per_benchmark[benchmark] = {
            "n": len(rows),
            **{
                grade: {
                    "accuracy": sum(s[grade]["correct"] for s in rows) / len(rows),
                    "interval": list(stats.accuracy_interval(scores[grade][benchmark])),
                    "format_rate": sum(s[grade]["formatted"] for s in rows) / len(rows),
                }
                for grade in GRADES
            },
            "mean_generation_length": statistics.fmean(lengths) if lengths else None,
            "max_generation_length": max(lengths) if lengths else None,
            "grading_timeouts": sum(s[grade]["timeout"] for s in rows for grade in GRADES),
        }
    return {
        "model": config.model,
        "template": config.template,
        # macro averages over benchmarks, as the paper's AVG, and their 95 % intervals (problems resampled within
        # each benchmark: stats.macro_interval)
        "average": {
            grade: statistics.fmean(v[grade]["accuracy"] for v in per_benchmark.values()) if per_benchmark else None
            for grade in GRADES
        },
        "average_interval": {
            grade: list(stats.macro_interval(scores[grade])) if per_benchmark else None for grade in GRADES
        },
        "benchmarks": per_benchmark,
        "backend": backend,
        "config": asdict(config),
    }


def _check_graders() -> None:
    from grpo_lambda.evaluation.paper_grade import check_dependencies

    check_dependencies()


def evaluate(config: EvalConfig, backend=None) -> dict:
    """Generate what `samples.jsonl` lacks, grade each sample as it finishes, write `results.json`. `backend`: an
    already started backend (else one is made from the config)."""
    _check_graders()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    samples_path = output_dir / "samples.jsonl"
    items = load_suite(config.suite, config.benchmarks, config.limit)
    finished = read_samples(samples_path)
    other = {s.get("template") for s in finished.values()} - {config.template, None}
    if other:
        raise GRPOLambdaError(
            f"{samples_path} holds samples generated with template {other.pop()}, not "
            f"{config.template}: use another --output_dir."
        )
    todo = [item for item in items if (item["benchmark"], item["index"]) not in finished]
    logger.info("%d problems, %d already evaluated, %d to generate", len(items), len(items) - len(todo), len(todo))

    backend_name = next(iter(finished.values())).get("backend") if finished else None
    grader = Grader(config.grading_timeout_s, warm_up)
    if todo:
        backend = backend or make_backend(config, model_folder(config.model))
        backend_name = backend.name
        stop = [R1_STOP] if config.template == "r1" else []
        prompts = [prompt_text(backend.tokenizer, item["problem"], config.template) for item in todo]
        with tqdm(total=len(items), initial=len(items) - len(todo), desc="evaluating") as bar:
            for position, text, tokens in backend.generate(prompts, stop, config.max_new_tokens):
                item = todo[position]
                sample = {
                    "benchmark": item["benchmark"],
                    "index": item["index"],
                    "prompt": prompts[position],
                    "completion": text,
                    "tokens": tokens,
                    "backend": backend.name,
                }
                sample = graded(grader, sample, item, config.template)
                append(samples_path, sample)
                finished[(item["benchmark"], item["index"])] = sample
                bar.update(1)
    wanted = {(item["benchmark"], item["index"]): item for item in items}
    if any(grade not in s for key, s in finished.items() if key in wanted for grade in GRADES):
        logger.info("grading samples written without both grades")  # an older samples.jsonl
        finished = {
            key: graded(grader, s, wanted[key], config.template) if key in wanted else s for key, s in finished.items()
        }
        rewrite(samples_path, list(finished.values()))
    grader.close()
    results = summarize([s for key, s in finished.items() if key in wanted], config, backend_name)
    replace_file(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def regrade(
    folder: str | Path, template: str | None = None, suite: str | None = None, grading_timeout_s: float = 5.0
) -> dict:
    """Re-score `<folder>/samples.jsonl` with the current graders and rewrite it and `results.json`; nothing is
    generated. Samples need `benchmark`, `index` (the problem's row in its benchmark) and `completion`; gold
    answers come from the suite; a problem may have several samples (accuracy is then the mean over samples). The template and suite default to those recorded in `results.json`, then in the
    samples (the template), then to the defaults (the suite); a samples file made elsewhere needs `template`."""
    _check_graders()
    folder = Path(folder)
    samples_path = folder / "samples.jsonl"
    if not samples_path.is_file():
        raise GRPOLambdaError(f"no samples.jsonl in {folder}.")
    recorded = read_results(folder / "results.json") if (folder / "results.json").is_file() else {}
    recorded_config = recorded.get("config", {})
    samples = read_lines(samples_path)  # several completions of one problem are all kept
    missing = [key for key in ("benchmark", "index", "completion") if any(key not in s for s in samples)]
    if missing or not samples:
        raise GRPOLambdaError(f"{samples_path} has no samples with benchmark, index and completion.")
    template = template or recorded.get("template") or next((s["template"] for s in samples if "template" in s), None)
    if template is None:
        raise GRPOLambdaError(f"say which template produced {samples_path}: --template {'|'.join(TEMPLATES)}.")
    benchmarks = list(dict.fromkeys(s["benchmark"] for s in samples))
    config = EvalConfig(
        model=recorded.get("model") or recorded_config.get("model") or str(folder),
        output_dir=str(folder),
        suite=suite or recorded_config.get("suite"),
        benchmarks=benchmarks,
        template=template,
        grading_timeout_s=grading_timeout_s,
    )
    items = {(i["benchmark"], i["index"]): i for i in load_suite(config.suite, benchmarks)}
    unknown = [(s["benchmark"], s["index"]) for s in samples if (s["benchmark"], s["index"]) not in items]
    if unknown:
        raise GRPOLambdaError(f"{len(unknown)} samples name no problem of {config.suite}, e.g. {unknown[0]}.")
    grader = Grader(grading_timeout_s, warm_up)
    samples = [graded(grader, s, items[(s["benchmark"], s["index"])], template) for s in tqdm(samples, desc="grading")]
    grader.close()
    rewrite(samples_path, samples)
    results = summarize(samples, config, recorded.get("backend") or samples[0].get("backend"))
    replace_file(folder / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (`--limit 0` or `-1` would silently cut the suite short)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of problems")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Checkpoint folder, Hub id or embedded:SmolLM2-135M-Instruct.")
    parser.add_argument("--regrade", default=None, metavar="FOLDER", help="Re-score FOLDER/samples.jsonl only.")
    parser.add_argument(
        "--suite",
        default=None,
        help=f"Benchmark folder (JSONL or save_to_disk) or Hub dataset id; default {DEFAULT_SUITE}.",
    )
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="Comma-separated; also: arithmetic.")
    parser.add_argument(
        "--template", default=None, choices=TEMPLATES, help="Default: the model's recipe template, else qwen_math."
    )
    parser.add_argument(
        "--backend", default="vllm", choices=BACKENDS, help="transformers: where vLLM cannot run (~20x slower)."
    )
    parser.add_argument("--max_new_tokens", type=int, default=3000)
    parser.add_argument("--max_model_len", type=int, default=4096)
    parser.add_argument("--limit", type=positive_int, default=None, help="First N problems of each benchmark (N ≥ 1).")
    parser.add_argument("--batch_size", type=int, default=8, help="Prompts per generate call (transformers backend).")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tensor_parallel_size", type=int, default=1)
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.9)
    parser.add_argument("--grading_timeout_s", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not args.regrade and not (args.model and args.output_dir):
        parser.error("give --model and --output_dir (or --regrade <folder>).")
    return args


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    values = {k: v for k, v in vars(args).items() if k != "regrade"}
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    return EvalConfig(**{**values, "benchmarks": benchmarks})


def report(results: dict, path: Path) -> str:
    """The evaluation's table: accuracy [95 % interval] under each grade, format rates, problems."""

    def cell(values: dict) -> str:
        low, high = values.get("interval") or (None, None)
        return f"{values['accuracy']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{values['accuracy']:.3f}"

    lines = [f"{'':<16} {'paper [95 % interval]':>22} {'corrected [95 % interval]':>26}  format (paper/corrected)   n"]
    for benchmark, values in results["benchmarks"].items():
        paper, corrected = values["paper"], values["corrected"]
        lines.append(
            f"{benchmark:<16} {cell(paper):>22} {cell(corrected):>26}  "
            f"{paper['format_rate']:.2f} / {corrected['format_rate']:.2f}{'':>14}{values['n']}"
        )
    average, intervals = results["average"], results.get("average_interval") or {}
    average_cells = [
        cell({"accuracy": average[grade], "interval": intervals.get(grade)}) for grade in ("paper", "corrected")
    ]
    lines.append(f"{'average':<16} {average_cells[0]:>22} {average_cells[1]:>26}")
    return "\n".join([*lines, f"results: {path}"])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    args = parse_args(argv)
    if args.regrade:
        results = regrade(args.regrade, args.template, args.suite, args.grading_timeout_s)
        print(report(results, Path(args.regrade) / "results.json"))
        return
    check_model(args.model, "MODEL")  # one line in seconds, before vLLM or transformers load anything
    check_output_folder(args.output_dir, "OUTPUT")
    config = config_from_args(args)
    results = evaluate(config)
    print(report(results, Path(config.output_dir) / "results.json"))


if __name__ == "__main__":
    sys.exit(exit_status(main, sys.argv[1:]))
