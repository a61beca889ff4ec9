"""Issue 32 item 5: an evaluation uses every GPU of its allocation, one engine per tensor_parallel_size GPUs
(--data_parallel_size), each generating a disjoint share of the samples into a file of its own, merged into
samples.jsonl once they finish; a kill mid-way loses no finished sample. The engines here are the transformers
backend on the tiny model, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from evaluation_runs import eval_config
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation.evaluate import engine_devices, evaluate
from grpo_lambda.evaluation.identity import identity
from grpo_lambda.evaluation.store import read_lines, sample_key, shard_path


def rows(folder) -> list[dict]:
    return read_lines(folder / "samples.jsonl")


def _keys(path) -> list[tuple]:
    return [sample_key(sample) for sample in read_lines(path)]


def test_two_engines_generate_disjoint_samples_merged_once(tiny_model_dir, tmp_path):
    config = eval_config(tmp_path / "dp", tiny_model_dir, limit=3, data_parallel_size=2)
    folder = tmp_path / "dp/eval"
    for rank in (0, 1):
        assert evaluate(config, shard=(rank, 2)) is None  # an engine writes no results.json
    shards = [_keys(shard_path(folder, rank)) for rank in (0, 1)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert not (folder / "samples.jsonl").exists()

    results = evaluate(config)  # the command's last step: merge, grade what lacks a grade, summarize
    merged = _keys(folder / "samples.jsonl")
    single = evaluate(eval_config(tmp_path / "single", tiny_model_dir, limit=3))
    assert sorted(merged) == sorted(_keys(tmp_path / "single/eval/samples.jsonl")) and len(set(merged)) == 6
    assert not list(folder.glob("samples.shard-*")) and not list(folder.glob("provenance.shard-*"))
    assert {b: v["n"] for b, v in results["benchmarks"].items()} == {b: 3 for b in single["benchmarks"]}
    generation = results["provenance"]["generation"]  # the engines', not the merge's (which generated nothing)
    assert results["provenance"]["engines"] == 2 and generation["tokens"] == sum(s["tokens"] for s in rows(folder))


def test_a_killed_engines_samples_are_kept_and_the_rest_generated_once(tiny_model_dir, tmp_path):
    """What a kill leaves: an engine's file with finished lines and a torn last one. The rerun keeps the finished
    ones as written (marked here, so that a regenerated one would show) and generates the torn one once."""
    config = eval_config(tmp_path, tiny_model_dir, limit=3, data_parallel_size=2)
    folder = tmp_path / "eval"
    evaluate(config, shard=(1, 2))
    lines = shard_path(folder, 1).read_text().splitlines()
    kept = [{**json.loads(line), "completion": "written before the kill"} for line in lines[:-1]]
    torn = lines[-1][: len(lines[-1]) // 2]
    shard_path(folder, 1).write_text("".join(json.dumps(sample) + "\n" for sample in kept) + torn)

    evaluate(config, shard=(0, 2))  # the rerun's engines: 0 does its share, 1 only what it lacks
    evaluate(config, shard=(1, 2))
    evaluate(config)
    rows = read_lines(folder / "samples.jsonl")
    keys = [sample_key(row) for row in rows]
    assert len(keys) == len(set(keys)) == 6, "a sample lost or doubled"
    marked = [row for row in rows if row["completion"] == "written before the kill"]
    assert [sample_key(row) for row in marked] == [sample_key(sample) for sample in kept]


def test_each_engine_gets_its_own_gpus_and_the_folder_resumes_under_another_count(
    tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert engine_devices(eval_config(tmp_path, tiny_model_dir, data_parallel_size=4)) == ["4", "5", "6", "7"]
    with pytest.raises(GRPOLambdaError, match="needs 6 GPUs; this allocation has 4") as raised:
        engine_devices(
            eval_config(tmp_path, tiny_model_dir, data_parallel_size=3, backend="vllm", tensor_parallel_size=2)
        )
    assert "\n" not in str(raised.value)
    two = eval_config(tmp_path, tiny_model_dir, data_parallel_size=2, backend="vllm", tensor_parallel_size=2)
    assert engine_devices(two) == ["4,5", "6,7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert engine_devices(two) == [None, None]  # no GPU: engines on the CPU
    resumed = eval_config(tmp_path, tiny_model_dir, data_parallel_size=2)  # not part of what the folder holds
    assert identity(resumed, str(tiny_model_dir), []) == identity(
        eval_config(tmp_path, tiny_model_dir), str(tiny_model_dir), []
    )


@pytest.mark.slow
def test_a_data_parallel_evaluation_killed_mid_way_resumes_with_every_sample_once(tiny_model_dir, tmp_path):
    """The command with two engines, SIGKILLed (its whole group) once the engines have written samples, run again:
    every sample once in samples.jsonl, those finished before the kill unchanged, no engine file left."""
    folder = tmp_path / "eval"
    command = [sys.executable, "-m", "grpo_lambda.evaluation.evaluate", "--model", str(tiny_model_dir)]
    command += ["--benchmarks", "aime", "math", "--limit", "8", "--batch_size", "1", "--max_new_tokens", "24"]
    command += ["--backend", "transformers", "--template", "qwen_math", "--dtype", "float32"]
    command += ["--data_parallel_size", "2", "--output_dir", str(folder)]
    log = tmp_path / "first.log"
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if all(len(read_lines(shard_path(folder, rank))) >= 2 for rank in (0, 1)):
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {rank: read_lines(shard_path(folder, rank)) for rank in (0, 1)}
    assert all(2 <= len(rows) for rows in before.values()), log.read_text()[-3000:]
    assert sum(map(len, before.values())) < 16, "the run must be interrupted part-way"

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_lines(folder / "samples.jsonl")
    keys = [sample_key(row) for row in rows]
    assert sorted(keys) == sorted((b, i, 0) for b in ("aime", "math") for i in range(8)), "a sample lost or doubled"
    by_key = {sample_key(row): row for row in rows}
    assert all(by_key[sample_key(row)] == row for rows in before.values() for row in rows)
    assert not list(folder.glob("samples.shard-*"))
    generated = [line for line in done.stderr.splitlines() if "to generate" in line]
    assert len(generated) == 3, generated  # two engines, then the merge that generates nothing
    results = json.loads((folder / "results.json").read_text())
    assert {b: v["n"] for b, v in results["benchmarks"].items()} == {"aime": 8, "math": 8}
    assert results["config"]["data_parallel_size"] == 2
