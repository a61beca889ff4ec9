"""Evaluation on AIME24, AMC, MATH500, MinervaMath and OlympiadBench with the understand-r1-zero protocol.

    python -m grpo_lambda.evaluation.evaluate --model <checkpoint | hub id> [--template qwen_math|r1|no] --output_dir <dir>
    python -m grpo_lambda.evaluation.evaluate --regrade <dir> [--template ..] [--suite ..]

Greedy decoding (temperature 0, the paper's protocol; `--samples k --temperature T [--top_p P] [--seed S]` draws k
samples per problem instead — `--samples aime:32,amc:32,4` per benchmark — for avg@k, maj@k and pass@k; `--protocol
open-r1|avg32` takes a peer's settings, config.PROTOCOLS), at most 3 000 new tokens within a 4 096-token model length, every
prompt in flight in one vLLM engine (vLLM schedules them); where vLLM cannot start, the evaluation stops and says so: the
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

import dataclasses
import json
import logging
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.backends import make_backend, model_folder, prompt_text, request_seed
from grpo_lambda.evaluation.config import EVAL_FIELDS, EvalConfig, RegradeConfig, parse_config, run_template
from grpo_lambda.evaluation.grades import GRADES, grade_sample, warm_up
from grpo_lambda.evaluation.identity import check_identity, identity
from grpo_lambda.evaluation.identity import hub_revision as hub_revision_of
from grpo_lambda.evaluation.store import (
    append,
    merge_shards,
    read_identity,
    read_lines,
    read_results,
    read_samples,
    rewrite,
    shard_path,
    torn_last_line,
    write_identity,
)
from grpo_lambda.evaluation.suite import load_suite
from grpo_lambda.grading import Grader
from grpo_lambda.inputs import check_model, check_output_folder
from grpo_lambda.processes import Supervisor
from grpo_lambda.records import hold_folder, replace_file
from grpo_lambda.templates import R1_STOP, TEMPLATES

logger = logging.getLogger(__name__)


def graded(grader: Grader, sample: dict, item: dict, template: str) -> dict:
    """`sample` with its template, gold answers and both grades (grades.grade_sample) set."""
    verdicts = grade_sample(grader, sample["completion"], template, item["golds"], item["paper_golds"])
    return {**sample, "template": template, "golds": item["golds"], "paper_golds": item["paper_golds"], **verdicts}


def _by_problem(rows: list[dict], grade: str) -> dict[int, list[bool]]:
    correct: dict[int, list[bool]] = {}
    for sample in rows:
        correct.setdefault(sample["index"], []).append(bool(sample[grade]["correct"]))
    return correct


def problem_scores(rows: list[dict], grade: str) -> np.ndarray:
    """Per problem, the fraction of its samples that `grade` marks correct (0 or 1 for one greedy sample), in problem
    order: what the intervals of grpo_lambda.evaluation.stats take."""
    correct = _by_problem(rows, grade)
    return np.array([np.mean(correct[index]) for index in sorted(correct)])


def pass_at_ks(n: int) -> list[int]:
    """The k of the pass@k a results.json reports from n samples per problem: powers of two up to n, and n."""
    return sorted({2**power for power in range(n.bit_length()) if 2**power <= n} | {n})


def problem_pass_at_k(rows: list[dict], grade: str, k: int) -> np.ndarray:
    """Per problem, stats.pass_at_k of its samples (each problem's own n ≥ k), in problem order."""
    correct = _by_problem(rows, grade)
    return np.array([stats.pass_at_k(np.array(correct[index]), k) for index in sorted(correct)])


def _lengths(rows: list[dict]) -> dict:
    """How long the completions ran: the share cut at the token limit (`truncated`; None for samples written before
    it was recorded), median and 90th percentile of generated tokens, and the mean length of correct and of wrong
    completions under each grade (a method that gets right only what it answers briefly shows here)."""
    lengths = np.array([s["tokens"] for s in rows if s.get("tokens") is not None])
    cut = [s["truncated"] for s in rows if "truncated" in s]
    values = {
        "truncation_rate": float(np.mean(cut)) if cut and len(cut) == len(rows) else None,
        "generation_length": {
            "median": float(np.median(lengths)) if lengths.size else None,
            "p90": float(np.percentile(lengths, 90)) if lengths.size else None,
        },
    }
    for grade in GRADES:
        split = {
            name: [s["tokens"] for s in rows if s.get("tokens") is not None and bool(s[grade]["correct"]) == right]
            for name, right in (("correct", True), ("wrong", False))
        }
        values["generation_length"][grade] = {
            f"mean_{name}": statistics.fmean(tokens) if tokens else None for name, tokens in split.items()
        }
    return values


def majority_correct(rows: list[dict], grade: str) -> np.ndarray:
    """maj@k per problem, in problem order: whether the answer most of its samples give (consensus, Wang et al.
    2023's self-consistency) is the one `grade` marks correct. Votes are the grade's own reading of each completion
    (its `answer`: the paper grade's reading for `paper`, answers.read_answer for `corrected`), compared as text with
    whitespace removed, so `\\frac{1}{2}` and `0.5` are two answers; a sample without an answer does not vote (none
    at all: wrong); a tie goes to the answer given first (lowest sample index). The verdict is that first sample's."""
    votes: dict[int, dict[str, list]] = {}
    for sample in sorted(rows, key=lambda s: (s["index"], s.get("sample", 0))):
        problem = votes.setdefault(sample["index"], {})
        answer = sample[grade].get("answer")
        if answer is None:
            continue
        vote = problem.setdefault("".join(str(answer).split()), [0, bool(sample[grade]["correct"])])
        vote[0] += 1
    return np.array(
        [max(votes[i].values(), key=lambda vote: vote[0])[1] if votes[i] else False for i in sorted(votes)], float
    )


def _value(scores: np.ndarray, key: str = "value") -> dict:
    return {key: float(scores.mean()), "interval": list(stats.accuracy_interval(scores))}


def _by_level(rows: list[dict], levels: dict, scores: dict[str, np.ndarray]) -> dict | None:
    """Per difficulty level (a benchmark whose every problem has one: MATH500's 1–5), its problems and each grade's
    accuracy (avg@k with k samples) with its interval over those problems."""
    indices = sorted({s["index"] for s in rows})
    found = [levels.get((rows[0]["benchmark"], i)) for i in indices]
    if not found or None in found:
        return None
    found = np.array(found)
    return {
        str(level): {
            "problems": int((found == level).sum()),
            **{grade: _value(values[found == level], "accuracy") for grade, values in scores.items()},
        }
        for level in sorted(set(found.tolist()))
    }


def config_record(config: EvalConfig) -> dict:
    """The config as results.json records it, its protocol settings resolved (the protocol's name is results.json's
    `protocol`); greedy decoding (the paper's protocol) leaves out the sampling settings, so that its results.json is
    the one written before sampling existed, and one engine (the default) leaves out data_parallel_size."""
    record = asdict(config)
    del record["protocol"]
    if config.data_parallel_size == 1:
        del record["data_parallel_size"]
    if config.sampling is None:
        for key in ("samples", "temperature", "top_p"):
            del record[key]
    return record


def summarize(samples: list[dict], config: EvalConfig, backend: str | None, levels: dict | None = None) -> dict:
    """results.json: per benchmark and grade the accuracy with its 95 % interval over problems and the format rate;
    the macro average over benchmarks (the paper's AVG) with its interval; generation lengths; `protocol`, the
    protocol whose settings the evaluation has (config.PROTOCOLS; None for others).

    With several samples per problem (k > 1 for a benchmark: config.samples) its accuracy is avg@k: the mean over
    samples, its interval over problems from each problem's fraction correct; the benchmark also gets `problems`,
    `samples_per_problem` (n, the fewest any problem has) and per grade `avg@k` ({k, value, interval}), `maj@k`
    (majority_correct: {k, value, interval}) and `pass@k` ({k: {value, interval}} for k = 1, 2, 4, .. ≤ n and n: the
    mean over problems of stats.pass_at_k, its interval from the per-problem estimates); `average_pass@k` holds their
    macro averages over the benchmarks that have each k. `levels` ({(benchmark, index): level or None}, from the
    suite) adds `by_level` to a benchmark whose every problem has a level."""
    per_benchmark, scores = {}, {grade: {} for grade in GRADES}
    passes: dict[str, dict[int, dict[str, np.ndarray]]] = {grade: {} for grade in GRADES}
    counts = config.sample_counts()
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
            **_lengths(rows),
        }
        if counts[benchmark] > 1:
            n = min(len(v) for v in _by_problem(rows, GRADES[0]).values())
            values = per_benchmark[benchmark]
            values.update(problems=len(scores[GRADES[0]][benchmark]), samples_per_problem=n)
            for grade in GRADES:
                per_problem = {k: problem_pass_at_k(rows, grade, k) for k in pass_at_ks(n)}
                values[grade]["avg@k"] = {"k": n, **_value(scores[grade][benchmark])}
                values[grade]["maj@k"] = {"k": n, **_value(majority_correct(rows, grade))}
                values[grade]["pass@k"] = {str(k): _value(v) for k, v in per_problem.items()}
                for k, v in per_problem.items():
                    passes[grade].setdefault(k, {})[benchmark] = v
        by_level = _by_level(rows, levels or {}, {grade: scores[grade][benchmark] for grade in GRADES})
        if by_level:
            per_benchmark[benchmark]["by_level"] = by_level
    record = config_record(config)
    results = {
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
        "protocol": config.protocol_used,
        "config": record,
    }
    sampled = [b for b in per_benchmark if counts[b] > 1]
    if sampled:
        results["average_pass@k"] = {
            grade: {
                str(k): {
                    "value": statistics.fmean(v.mean() for v in by_benchmark.values()),
                    "interval": list(stats.macro_interval(by_benchmark)),
                }
                for k, by_benchmark in sorted(passes[grade].items())
                if by_benchmark.keys() == per_benchmark.keys()  # a k every benchmark has
            }
            for grade in GRADES
        }
    return results


def _check_graders() -> None:
    from grpo_lambda.evaluation.paper_grade import check_dependencies

    check_dependencies()


def _drawn(sampling: dict | None) -> str:
    if sampling is None:
        return "greedily (temperature 0)"
    return f"with temperature {sampling['temperature']}, top_p {sampling['top_p']}, seed {sampling['seed']}"


def with_template(config: EvalConfig) -> EvalConfig:
    """`config` with its prompt template resolved (the run's, when not given), the graders checked."""
    _check_graders()
    if config.template is not None:
        return config
    template, reason = run_template(config.model)
    logger.info("template %s (%s)", template, reason)
    return dataclasses.replace(config, template=template)


def evaluate(
    config: EvalConfig, backend=None, folder_held: bool = False, shard: tuple[int, int] | None = None
) -> dict | None:
    """Generate what `samples.jsonl` lacks, grade each sample as it finishes, write `results.json`. `backend`: an
    already started backend (else one is made from the config). With config.samples = k, problem i has samples
    0..k-1, each a request of its own; a rerun with a larger k adds the samples it lacks. `shard` (r, n): one of n
    data-parallel engines (`main`), which generates only the samples whose position among those wanted is r modulo
    n, into samples.shard-<r>.jsonl, and writes no results.json (the command merges the shards, then summarizes)."""
    config = with_template(config)
    output_dir = Path(config.output_dir)
    lock = None if folder_held else hold_folder(output_dir, "evaluation")  # else the command holds it
    try:
        return _evaluate(config, backend, output_dir, shard)
    finally:
        if lock is not None:
            os.close(lock)


ENGINE_PROVENANCE = "provenance.shard-{}.json"  # a data-parallel engine's start-up and generation, until summarized


def _evaluate(config: EvalConfig, backend, output_dir: Path, shard: tuple[int, int] | None = None) -> dict | None:
    samples_path = output_dir / "samples.jsonl"
    if shard is None:
        merge_shards(output_dir)  # what data-parallel engines wrote before a kill
    every = load_suite(config.suite, config.benchmarks)
    items = every if config.limit is None else [item for item in every if item["index"] < config.limit]
    model_path = model_folder(config.model)
    current = identity(config, model_path, every)
    recorded = read_identity(output_dir)
    check_identity(output_dir, recorded, current)
    finished = read_samples(samples_path)
    if shard is not None:
        finished.update(read_samples(shard_path(output_dir, shard[0])))
        samples_path = shard_path(output_dir, shard[0])  # this engine's own file: no two writers on one file
    other = {s.get("template") for s in finished.values()} - {config.template, None}
    if other:
        raise GRPOLambdaError(
            f"{samples_path} holds samples generated with template {other.pop()}, not "
            f"{config.template}: use another --output_dir."
        )
    drawn = next((s.get("sampling") for s in finished.values() if s.get("sampling") != config.sampling), False)
    if drawn is not False:
        raise GRPOLambdaError(
            f"{samples_path} holds samples drawn {_drawn(drawn)}, not {_drawn(config.sampling)}: evaluate with "
            "those settings or use another --output_dir."
        )
    if recorded is None and (shard is None or shard[0] == 0):  # one writer
        if finished:
            logger.warning("%s was written before evaluations recorded what they hold: taken as this one", output_dir)
        write_identity(output_dir, current)
    counts = config.sample_counts()
    wanted = {
        (item["benchmark"], item["index"], sample): item
        for item in items
        for sample in range(counts[item["benchmark"]])
    }
    todo = [
        key
        for position, key in enumerate(wanted)
        if key not in finished and (shard is None or position % shard[1] == shard[0])
    ]
    logger.info(
        "%d problems × %s samples, %d already evaluated, %d to generate",
        len(items),
        config.samples,
        len(wanted) - len(todo),
        len(todo),
    )

    backend_name = next(iter(finished.values())).get("backend") if finished else None
    grader = Grader(config.grading_timeout_s, warm_up)
    engine, start_up, generated = None, None, 0
    started = time.monotonic()
    if todo:
        backend = backend or make_backend(config, model_path)
        backend_name, engine = backend.name, backend.engine()
        start_up, started = time.monotonic() - started, time.monotonic()
        stop = [R1_STOP] if config.template == "r1" else []
        texts = {key[:2]: prompt_text(backend.tokenizer, wanted[key]["problem"], config.template) for key in todo}
        prompts = [texts[key[:2]] for key in todo]
        seeds = [request_seed(config.seed, *key) for key in todo]
        with tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="evaluating") as bar:
            for position, text, tokens, truncated in backend.generate(prompts, stop, config.max_new_tokens, seeds):
                key = todo[position]
                generated += tokens
                sample = {
                    "benchmark": key[0],
                    "index": key[1],
                    "sample": key[2],
                    "prompt": prompts[position],
                    "completion": text,
                    "tokens": tokens,
                    "truncated": truncated,
                    "backend": backend.name,
                    **({"sampling": config.sampling} if config.sampling else {}),
                }
                sample = graded(grader, sample, wanted[key], config.template)
                append(samples_path, sample)
                finished[key] = sample
                bar.update(1)
    if shard is not None:
        grader.close()
        engine_record = {"engine": engine, "start_up_seconds": start_up, "tokens": generated}
        engine_record["seconds"] = time.monotonic() - started
        replace_file(output_dir / ENGINE_PROVENANCE.format(shard[0]), json.dumps(engine_record) + "\n")
        return None
    if any(grade not in s for key, s in finished.items() if key in wanted for grade in GRADES):
        logger.info("grading samples written without both grades")  # an older samples.jsonl
        finished = {
            key: graded(grader, s, wanted[key], config.template) if key in wanted else s for key, s in finished.items()
        }
        rewrite(samples_path, list(finished.values()))
    grader.close()
    seconds = time.monotonic() - started
    levels = {(item["benchmark"], item["index"]): item["level"] for item in every}
    results = summarize([s for key, s in finished.items() if key in wanted], config, backend_name, levels)
    if current["model_fingerprint"] is None and current["model_revision"] is None:  # a Hub model downloaded since
        current = {**current, "model_revision": hub_revision_of(config.model)}
    results["identity"] = current
    previous = read_results(output_dir / "results.json") if (output_dir / "results.json").is_file() else {}
    engines = [json.loads(path.read_bytes()) for path in sorted(output_dir.glob(ENGINE_PROVENANCE.format("*")))]
    if engines:  # data-parallel engines generated this invocation's samples, side by side
        engine = engines[0]["engine"]
        starts = [e["start_up_seconds"] for e in engines if e["start_up_seconds"] is not None]
        start_up, seconds = max(starts) if starts else None, max(e["seconds"] for e in engines)
        generated = sum(e["tokens"] for e in engines)
    results["provenance"] = {
        "engine": engine or (previous.get("provenance") or {}).get("engine"),
        # this invocation's engine start-up and generation (a resumed evaluation: what it added)
        "start_up_seconds": None if start_up is None else round(start_up, 1),
        "generation": {
            "seconds": round(seconds, 1),
            "tokens": generated,
            "tokens_per_second": round(generated / seconds, 1) if generated and seconds else None,
        },
        **({"engines": len(engines)} if engines else {}),
    }
    replace_file(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    for path in output_dir.glob(ENGINE_PROVENANCE.format("*")):
        path.unlink()
    return results


def regrade(
    folder: str | Path, template: str | None = None, suite: str | None = None, grading_timeout_s: float = 5.0
) -> dict:
    """Re-score `<folder>/samples.jsonl` with the current graders and rewrite it and `results.json`; nothing is
    generated, and nothing but the grades changes: the settings, identity and provenance results.json recorded are
    kept, and a `template` or `suite` other than the recorded ones is refused (samples are graded as they were
    generated). Samples need `benchmark`, `index` (the problem's row in its benchmark) and `completion`; gold answers
    come from the suite. A samples file made elsewhere (no results.json) needs `template`."""
    _check_graders()
    folder = Path(folder)
    samples_path = folder / "samples.jsonl"
    if not samples_path.is_file():
        raise GRPOLambdaError(f"no samples.jsonl in {folder}.")
    if torn_last_line(samples_path):
        raise GRPOLambdaError(
            f"{samples_path} ends in a torn line (an evaluation killed mid-write): run that evaluation again to "
            "generate the sample anew, then regrade."
        )
    recorded = read_results(folder / "results.json") if (folder / "results.json").is_file() else {}
    recorded_config = {k: v for k, v in recorded.get("config", {}).items() if k in EVAL_FIELDS}
    samples = read_lines(samples_path)  # several completions of one problem are all kept
    missing = [key for key in ("benchmark", "index", "completion") if any(key not in s for s in samples)]
    if missing or not samples:
        raise GRPOLambdaError(f"{samples_path} has no samples with benchmark, index and completion.")
    generated_with = {s["template"] for s in samples if "template" in s} | (
        {recorded["template"]} if recorded.get("template") else set()
    )
    if template and generated_with and generated_with != {template}:
        raise GRPOLambdaError(
            f"{samples_path} was generated with template {', '.join(sorted(generated_with))}, not {template}: "
            "regrade grades samples as they were generated (drop TEMPLATE=)."
        )
    template = template or next(iter(generated_with), None)
    if template is None:
        raise GRPOLambdaError(f"say which template produced {samples_path}: --template {'|'.join(TEMPLATES)}.")
    if suite and recorded_config and suite != recorded_config.get("suite"):
        raise GRPOLambdaError(
            f"{folder} was evaluated on suite {recorded_config.get('suite') or 'shipped'}, not {suite}: regrade keeps "
            "what was evaluated (drop SUITE=)."
        )
    if recorded_config:
        config = EvalConfig(**{**recorded_config, "template": template, "grading_timeout_s": grading_timeout_s})
    else:  # completions made elsewhere: how they were drawn, as the samples say (greedy: nothing recorded)
        drawn = next((s["sampling"] for s in samples if s.get("sampling")), None) or {}
        sampling = {key: drawn[key] for key in ("temperature", "top_p", "seed") if key in drawn}
        if drawn:
            sampling["samples"] = 1 + max(s.get("sample", 0) for s in samples)
        config = EvalConfig(
            model=str(folder),
            output_dir=str(folder),
            suite=suite,
            benchmarks=list(dict.fromkeys(s["benchmark"] for s in samples)),
            template=template,
            grading_timeout_s=grading_timeout_s,
            **sampling,
        )
    items = {(i["benchmark"], i["index"]): i for i in load_suite(config.suite, config.benchmarks)}
    unknown = [(s["benchmark"], s["index"]) for s in samples if (s["benchmark"], s["index"]) not in items]
    if unknown:
        raise GRPOLambdaError(f"{len(unknown)} samples name no problem of {config.suite}, e.g. {unknown[0]}.")
    grader = Grader(grading_timeout_s, warm_up)
    samples = [graded(grader, s, items[(s["benchmark"], s["index"])], template) for s in tqdm(samples, desc="grading")]
    grader.close()
    rewrite(samples_path, samples)
    counts = config.sample_counts()
    summarized = [  # what results.json summarized: its SAMPLES and LIMIT (a larger earlier run's extra samples kept)
        s
        for s in samples
        if s.get("sample", 0) < counts.get(s["benchmark"], 0) and (config.limit is None or s["index"] < config.limit)
    ]
    levels = {key: item["level"] for key, item in items.items()}
    results = summarize(summarized, config, recorded.get("backend") or samples[0].get("backend"), levels)
    results.update({key: recorded[key] for key in ("identity", "provenance") if key in recorded})
    replace_file(folder / "results.json", json.dumps(results, indent=2) + "\n")
    return results


def report(results: dict, path: Path) -> str:
    """The evaluation's tables: accuracy [95 % interval] under each grade, format rates, problems; with several samples
    per problem the accuracy is avg@k, and a second table gives k, maj@k and pass@k [95 % interval] per benchmark and
    grade; a benchmark with difficulty levels (MATH500) gets its accuracy per level."""

    def cell(values: dict, key: str = "accuracy") -> str:
        low, high = values.get("interval") or (None, None)
        return f"{values[key]:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{values[key]:.3f}"

    per_benchmark = results["benchmarks"]
    sampled = {b: values for b, values in per_benchmark.items() if "pass@k" in values["paper"]}
    protocol = results.get("protocol")
    lines = [f"protocol: {protocol}" if protocol else "protocol: none (settings of no named protocol)"]
    if sampled:
        settings, k = results["config"], {values["samples_per_problem"] for values in sampled.values()}
        lines.append(
            f"avg@{k.pop() if len(k) == 1 else 'k'} (temperature {settings['temperature']}, top_p {settings['top_p']}, "
            f"seed {settings['seed']}{'' if not k else '; k per benchmark below'}): accuracy over every sample, n "
            "counts problems"
        )
    lines.append(
        f"{'':<16} {'paper [95 % interval]':>22} {'corrected [95 % interval]':>26}  format (paper/corrected)   n"
    )
    for benchmark, values in per_benchmark.items():
        paper, corrected = values["paper"], values["corrected"]
        lines.append(
            f"{benchmark:<16} {cell(paper):>22} {cell(corrected):>26}  "
            f"{paper['format_rate']:.2f} / {corrected['format_rate']:.2f}{'':>14}{values.get('problems', values['n'])}"
        )
    average, intervals = results["average"], results.get("average_interval") or {}
    average_cells = [
        cell({"accuracy": average[grade], "interval": intervals.get(grade)}) for grade in ("paper", "corrected")
    ]
    lines.append(f"{'average':<16} {average_cells[0]:>22} {average_cells[1]:>26}")
    if sampled:
        ks = sorted({k for values in sampled.values() for k in values["paper"]["pass@k"]}, key=int)
        columns = ["maj@k [95 % interval]", *(f"pass@{k} [95 % interval]" for k in ks)]
        lines += ["", f"{'':<26}{'k':>4}" + "".join(f"{c:>24}" for c in columns)]
        rows = [
            (f"{b} ({grade})", v[grade]["avg@k"]["k"], {"maj": v[grade]["maj@k"], **v[grade]["pass@k"]})
            for b, v in sampled.items()
            for grade in ("paper", "corrected")
        ]
        macro = results.get("average_pass@k") or {}
        rows += [(f"average ({grade})", "", macro[grade]) for grade in ("paper", "corrected") if macro.get(grade)]
        for name, k, values in rows:
            cells = [cell(values[key], "value") if key in values else "" for key in ("maj", *ks)]
            lines.append(f"{name:<26}{k:>4}" + "".join(f"{c:>24}" for c in cells))
    for benchmark, values in per_benchmark.items():
        if "by_level" in values:
            lines += [
                "",
                f"{benchmark} by level   {'paper [95 % interval]':>22} {'corrected [95 % interval]':>26}  problems",
            ]
            for level, by in values["by_level"].items():
                lines.append(
                    f"{'level ' + level:<16} {cell(by['paper']):>22} {cell(by['corrected']):>26}  {by['problems']}"
                )
    return "\n".join([*lines, f"results: {path}"])


WORKER = "GRPO_LAMBDA_EVALUATION_WORKER"  # set in the process that runs the engine, under the command's supervisor
SHARD = "GRPO_LAMBDA_EVALUATION_SHARD"  # r/n: that process is data-parallel engine r of n


def engine_devices(config: EvalConfig) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each of the config's data-parallel engines: consecutive slices of tensor_parallel_size
    GPUs of the command's (its CUDA_VISIBLE_DEVICES, else every GPU torch sees); None each where there is no GPU (the
    CPU test bench). Too few GPUs is refused in one line."""
    n, width = config.data_parallel_size, config.tensor_parallel_size
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        gpus = [str(gpu) for gpu in range(torch.cuda.device_count())]
    else:
        gpus = [gpu for gpu in visible.split(",") if gpu.strip()]
    if not gpus:
        return [None] * n
    if len(gpus) < n * width:
        raise GRPOLambdaError(
            f"data_parallel_size {n} × tensor_parallel_size {width} needs {n * width} GPUs; this allocation has "
            f"{len(gpus)} ({','.join(gpus)}): lower DATA_PARALLEL or ask for more GPUs."
        )
    return [",".join(gpus[r * width : (r + 1) * width]) for r in range(n)]


def main(argv: list[str] | None = None) -> int | None:
    """The command: checks its inputs in seconds, holds the output folder (records.hold_folder: one evaluation per
    folder) and runs the evaluation in a child process tree under grpo_lambda.processes.Supervisor, so that the
    engine's own processes (vLLM's EngineCore) end with it, however either is killed: a SIGKILLed child's group is
    stopped by the command, and a child whose command died stops its group itself. With data_parallel_size n > 1 the
    child trees are n engines (`evaluate` with a shard), each on its own GPUs (`engine_devices`), then one that merges
    their samples and writes results.json; an engine that fails stops the others and the command, with its status."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--regrade" in argv:
        request = parse_config(argv, RegradeConfig)
        results = regrade(request.regrade, request.template, request.suite, request.grading_timeout_s)
        print(report(results, Path(request.regrade) / "results.json"))
        return 0
    config = parse_config(argv)
    if os.environ.get(WORKER) == config.output_dir:
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))  # this tree, engine included
        if os.environ.get(SHARD):
            rank, count = map(int, os.environ[SHARD].split("/"))
            evaluate(config, folder_held=True, shard=(rank, count))
            return 0
        results = evaluate(config, folder_held=True)
        print(report(results, Path(config.output_dir) / "results.json"))
        return 0
    check_model(config.model, "MODEL")  # one line in seconds, before vLLM or transformers load anything
    check_output_folder(config.output_dir, "OUTPUT")
    with_template(config)  # a damaged run record, an empty benchmark, a problem without gold: here, in seconds
    load_suite(config.suite, config.benchmarks)
    devices = engine_devices(config) if config.data_parallel_size > 1 else []
    lock = hold_folder(Path(config.output_dir), "evaluation")
    command = [sys.executable, "-m", "grpo_lambda.evaluation.evaluate", *argv, "--output_dir", config.output_dir]
    env = {**os.environ, WORKER: config.output_dir}
    status = 0
    for stale in Path(config.output_dir).glob(ENGINE_PROVENANCE.format("*")):  # an earlier, killed run's engines'
        stale.unlink()
    with Supervisor() as supervisor:
        if config.data_parallel_size > 1:  # the engines, then one process that merges their samples and grades
            merge_shards(Path(config.output_dir))  # so that each engine starts from every sample finished so far
            trees = [
                (command, {**env, SHARD: f"{rank}/{len(devices)}", **({"CUDA_VISIBLE_DEVICES": gpus} if gpus else {})})
                for rank, gpus in enumerate(devices)
            ]
            status = supervisor.run_all(trees, pass_fds=(lock,))
        if status == 0:
            status = supervisor.run(command, env=env, pass_fds=(lock,))
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(exit_status(main))
