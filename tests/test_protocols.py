"""The peers' evaluation protocols (issue 33.8): what each PROTOCOL sets, against its source as written here and the
docs' table; how a protocol meets explicit flags; samples per benchmark through the store, the identity and the
tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from evaluation_runs import eval_config
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.config import PROTOCOLS, EvalConfig, as_flags, given_fields, parse_config
from grpo_lambda.evaluation.evaluate import evaluate, regrade, report
from grpo_lambda.evaluation.suite import BENCHMARKS

DOCS = Path(__file__).parents[1] / "docs" / "evaluation.md"
ARGS = ["--model", "m", "--output_dir", "o", "--template", "no"]

# What each protocol must set, written from its source (not from config.PROTOCOLS): samples per problem of the five
# benchmarks, temperature, top_p, new tokens, model length.
SOURCES = {
    # sail-sg/understand-r1-zero evaluate_model.py: temperature 0, top_p 1, max_tokens 3000, max_model_len 4096, n 1
    "understand-r1-zero": ({b: 1 for b in BENCHMARKS}, 0.0, 1.0, 3000, 4096),
    # open-r1 README: AIME 2024 64 responses, MATH-500 4; temperature 0.6, top_p 0.95, 32768 new tokens and length
    "open-r1": ({"aime": 64, "amc": 4, "math": 4, "minerva": 4, "olympiad_bench": 4}, 0.6, 0.95, 32768, 32768),
    # DAPO §4.1: avg@32 on AIME, temperature 1.0, top_p 0.7 (AMC 32, the rest 4, the paper's token limits: ours)
    "avg32": ({"aime": 32, "amc": 32, "math": 4, "minerva": 4, "olympiad_bench": 4}, 1.0, 0.7, 3000, 4096),
}


def settings(config: EvalConfig) -> tuple:
    return config.sample_counts(), config.temperature, config.top_p, config.max_new_tokens, config.max_model_len


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_protocol_sets_what_its_source_says(name):
    config = parse_config([*ARGS, "--protocol", name])
    assert settings(config) == SOURCES[name]
    assert config.protocol_used == name
    assert settings(parse_config(ARGS)) == SOURCES["understand-r1-zero"]  # no PROTOCOL: the paper's


def test_the_docs_table_has_one_row_per_protocol_with_what_it_sets_and_a_source():
    """docs/evaluation.md's protocol table: `PROTOCOL` | SAMPLES | temperature | top_p | tokens / length | source."""
    rows = [line.split("|")[1:-1] for line in DOCS.read_text().splitlines() if re.match(r"\| `[a-z0-9-]+`", line)]
    table = {cells[0].strip().strip("`").split("`")[0]: [c.strip() for c in cells[1:]] for cells in rows}
    assert list(table) == list(PROTOCOLS) == list(SOURCES)
    for name, (samples, temperature, top_p, limits, source) in table.items():
        config = parse_config([*ARGS, "--samples", samples.strip("`"), "--temperature", temperature, "--top_p", top_p])
        tokens, length = (int(n.replace(" ", "")) for n in limits.split("/"))
        assert settings(config) == SOURCES[name][:3] + (3000, 4096) and (tokens, length) == SOURCES[name][3:]
        assert len(source) > 20, f"{name}: no source"


def test_a_flag_that_contradicts_the_named_protocol_is_refused_and_one_that_agrees_is_not():
    """Explicit flags that contradict PROTOCOL would have results.json name a protocol it was not run with: refused,
    naming both values. A flag equal to the protocol's, and the settings a protocol leaves free, are accepted."""
    for flags, named in (
        (["--temperature", "0.7"], "temperature=0.6 (given: 0.7)"),
        (["--samples", "8"], "samples=aime:64,math:4,4 (given: 8)"),
        (["--max_new_tokens", "3000"], "max_new_tokens=32768 (given: 3000)"),
    ):
        with pytest.raises(GRPOLambdaError, match=re.escape(f"PROTOCOL=open-r1 sets {named}")) as raised:
            parse_config([*ARGS, "--protocol", "open-r1", *flags])
        assert "\n" not in str(raised.value) and "leave PROTOCOL out" in str(raised.value)
    with pytest.raises(GRPOLambdaError, match="PROTOCOL=understand-r1-zero sets temperature=0.0"):
        parse_config([*ARGS, "--protocol", "understand-r1-zero", "--temperature", "0.6"])
    with pytest.raises(GRPOLambdaError, match="PROTOCOL='dapo' is not one of understand-r1-zero, open-r1, avg32"):
        parse_config([*ARGS, "--protocol", "dapo"])
    agreeing = [
        "--temperature",
        "0.6",
        "--samples",
        "aime:64,4",
        "--limit",
        "2",
        "--seed",
        "3",
        "--benchmarks",
        "aime",
    ]
    config = parse_config([*ARGS, "--protocol", "open-r1", *agreeing])
    assert (config.samples, config.limit, config.seed, config.protocol_used) == (64, 2, 3, "open-r1")


def test_without_a_protocol_flags_change_the_papers_settings_and_results_name_the_protocol_they_match():
    custom = parse_config([*ARGS, "--samples", "4", "--temperature", "0.6"])
    assert settings(custom)[:3] == ({b: 4 for b in BENCHMARKS}, 0.6, 1.0) and custom.protocol_used is None
    same = ["--samples", "aime:64,4", "--temperature", "0.6", "--top_p", "0.95"]
    assert parse_config([*ARGS, *same, "--max_new_tokens", "32768", "--max_model_len", "32768"]).protocol_used == (
        "open-r1"
    )


def test_samples_per_benchmark_are_parsed_and_refused_in_one_line():
    config = parse_config([*ARGS, "--samples", "aime:32, amc:32,4", "--temperature", "1"])
    assert config.sample_counts() == {"aime": 32, "amc": 32, "math": 4, "minerva": 4, "olympiad_bench": 4}
    assert config.samples == "aime:32,amc:32,math:4,minerva:4,olympiad_bench:4"  # results.json's record
    assert parse_config([*ARGS, "--samples", "aime:8,8", "--temperature", "1"]).samples == 8  # one count: a number
    assert EvalConfig(model="m", output_dir="o", template="no", samples=config.samples, temperature=1.0) == config
    for spec, message in (
        ("aime:32", "gives no count for amc, math, minerva, olympiad_bench: add amc:k, or a bare count"),
        ("aime:32,aime:4,1", "names aime twice"),
        ("gsm8k:4,1", "names gsm8k which is no benchmark"),
        ("4,8", "gives two counts for the other benchmarks"),
        ("aime:0,4", "give a whole number of samples per problem, at least 1"),
        ("many", "give a whole number of samples per problem, at least 1"),
    ):
        with pytest.raises(GRPOLambdaError, match=f"samples={re.escape(spec)}.*{message}") as raised:
            parse_config([*ARGS, "--samples", spec, "--temperature", "1"])
        assert "\n" not in str(raised.value)


def test_a_sweeps_protocol_reads_back_as_the_same_config():
    """A sweep's `evaluation:` section passes EvalConfig fields through as_flags; the protocol and per-benchmark
    samples survive the round trip, and given_fields reads them as set."""
    values = dict(model="m", output_dir="o", protocol="avg32", benchmarks=["aime", "math"], limit=3)
    assert parse_config(as_flags(values)) == EvalConfig(**values)
    assert given_fields(["--protocol", "open-r1", "--samples", "aime:64,4"]) == {
        "protocol": "open-r1",
        "samples": "aime:64,4",
    }


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_samples_per_benchmark_on_the_tiny_model_resume_and_regrade(tiny_model_dir, tmp_path):
    """SAMPLES=aime:3,1 at temperature 1: 3 samples of each AIME problem, 1 of each Minerva one; avg@k and pass@k
    only where k > 1; raising Minerva's count adds its samples alone; regrade reads the per-benchmark record back."""
    run = dict(samples="aime:3,1", temperature=1.0, batch_size=1)
    results = evaluate(eval_config(tmp_path, tiny_model_dir, **run))
    keys = sorted((r["benchmark"], r["index"], r["sample"]) for r in _rows(tmp_path / "eval"))
    assert keys == [("aime", i, j) for i in range(2) for j in range(3)] + [("minerva", i, 0) for i in range(2)]
    assert results["config"]["samples"] == "aime:3,minerva:1" and results["protocol"] is None
    assert (
        results["benchmarks"]["aime"]["samples_per_problem"] == 3
        and "pass@k" in results["benchmarks"]["aime"]["paper"]
    )
    assert "pass@k" not in results["benchmarks"]["minerva"]["paper"]
    assert "avg@3 (temperature 1.0" in report(results, "results.json")
    before = _rows(tmp_path / "eval")
    grown = evaluate(eval_config(tmp_path, tiny_model_dir, **{**run, "samples": "aime:3,2"}))
    after = _rows(tmp_path / "eval")
    assert after[: len(before)] == before and [(r["benchmark"], r["sample"]) for r in after[len(before) :]] == [
        ("minerva", 1),
        ("minerva", 1),
    ]
    assert grown["benchmarks"]["minerva"]["samples_per_problem"] == 2
    same = lambda r: {k: v for k, v in r.items() if k != "provenance"}  # noqa: E731
    assert same(regrade(tmp_path / "eval")) == same(grown)


def test_another_protocol_is_another_evaluation_and_a_protocol_run_records_its_name(tiny_model_dir, tmp_path):
    """A folder evaluated under avg32 is another evaluation than open-r1's (identity: token limits and how samples are
    drawn), and than avg32 with fewer samples is not (a resume adds samples); results.json names the protocol whose
    settings it has, and the report's first line says it."""
    from grpo_lambda.evaluation.evaluate import summarize
    from grpo_lambda.evaluation.identity import differences, identity

    def of(**overrides):
        config = EvalConfig(model=str(tiny_model_dir), output_dir=str(tmp_path), template="no", **overrides)
        return identity(config, str(tiny_model_dir), [])

    found = differences(of(protocol="avg32"), of(protocol="open-r1"))
    assert [line.split(":")[0] for line in found] == ["max_new_tokens", "max_model_len", "sampling"]
    assert differences(of(protocol="avg32"), of(samples="aime:4,2", temperature=1.0, top_p=0.7)) == []
    verdict = {"correct": True, "formatted": True, "timeout": False, "answer": "1"}
    rows = [
        {"benchmark": "aime", "index": 0, "sample": j, "tokens": 3, "paper": verdict, "corrected": verdict}
        for j in range(32)
    ]
    results = summarize(
        rows, EvalConfig(model="m", output_dir="o", template="no", protocol="avg32", benchmarks=["aime"]), "t"
    )
    assert results["protocol"] == "avg32" and results["benchmarks"]["aime"]["samples_per_problem"] == 32
    assert report(results, "r").splitlines()[0] == "protocol: avg32"


def test_tables_put_only_the_papers_protocol_beside_the_papers_numbers(tmp_path, capsys):
    from grpo_lambda.evaluation.grades import GRADES
    from grpo_lambda.evaluation.tables import collect_results, load_paper

    run = tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo"
    per = {b: {grade: {"accuracy": 0.5, "interval": [0.4, 0.6]} for grade in GRADES} for b in BENCHMARKS}
    for name, protocol in (("eval-paper", "understand-r1-zero"), ("eval-open-r1", "open-r1"), ("eval-avg32", "avg32")):
        record = {k: v for k, v in EvalConfig(model="x", output_dir="o", protocol=protocol).__dict__.items()}
        if protocol == "understand-r1-zero":  # as results.json records greedy: no sampling settings
            record = {k: v for k, v in record.items() if k not in ("samples", "temperature", "top_p")}
        (run / name).mkdir(parents=True)
        results = {"model": "x", "benchmarks": per, "average": {}, "config": record, "protocol": protocol}
        (run / name / "results.json").write_text(json.dumps(results))
    found = collect_results(tmp_path, load_paper())
    assert list(found) == [("Qwen/Qwen2.5-Math-1.5B-Instruct", "math12k", "grpo")]
    out = capsys.readouterr().out
    assert "eval-open-r1/results.json: not the paper's protocol (the open-r1 protocol: samples=aime:64" in out
    assert "eval-avg32/results.json: not the paper's protocol (the avg32 protocol: samples=" in out
    assert "eval-paper" not in out
