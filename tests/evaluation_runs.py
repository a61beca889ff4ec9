"""Shared by the evaluation tests: a small evaluation's settings, and an evaluation command SIGKILLed again and again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from grpo_lambda.evaluation.config import EvalConfig
from grpo_lambda.evaluation.store import read_lines


def eval_config(tmp_path, model, **overrides) -> EvalConfig:
    """Two problems of AIME and Minerva, 8 new tokens, the transformers backend in float32: seconds on the tiny model."""
    defaults = dict(
        model=str(model),
        output_dir=str(tmp_path / "eval"),
        benchmarks=["aime", "minerva"],
        template="qwen_math",
        backend="transformers",
        max_new_tokens=8,
        limit=2,
        dtype="float32",
    )
    return EvalConfig(**{**defaults, **overrides})


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_repeatedly(command: list[str], samples: Path, logs: Path, rng: random.Random, runs: int = 3) -> list[dict]:
    """Runs `command` `runs` times, each SIGKILLed (its whole process group: the grading worker too) at a seeded
    random moment once it has written 1 to 3 more samples; returns what samples.jsonl holds after the last kill."""
    kept: list[dict] = []
    for run in range(runs):
        wanted = line_count(samples) + rng.randint(1, 3)
        log = logs / f"run-{run}.log"
        with log.open("w") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and line_count(samples) < wanted and process.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.2))
        assert process.poll() is None, f"run {run} ended before its kill: {log.read_text()[-2000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before, kept = len(kept), read_lines(samples)  # no corrupt line: at most a torn last one, skipped
        assert len(kept) > before, f"run {run} wrote no sample"
    return kept
