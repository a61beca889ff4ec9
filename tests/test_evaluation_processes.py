"""Nothing of an evaluation outlives it (issue 34): vLLM's engine runs in processes of its own (EngineCore and its
worker), which a SIGKILL of the evaluation's Python process used to leave running. The evaluation command now runs
the engine in a supervised child tree: whichever of the two is SIGKILLed, the engine's processes end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO_ROOT
from grpo_lambda.processes import descendants

pytestmark = pytest.mark.slow


def _tree_alive(pids: dict[int, str]) -> list[int]:
    from test_launch_signals import _start_time

    return [pid for pid, started in pids.items() if started is not None and _start_time(pid) == started]


@pytest.mark.parametrize("victim", ["engine_process", "command"])
def test_a_sigkilled_vllm_evaluation_leaves_no_engine_behind(tiny_model_dir, tmp_path, victim):
    from test_launch_signals import _start_time

    command = [sys.executable, "-m", "grpo_lambda.evaluation.evaluate", "--model", str(tiny_model_dir)]
    command += ["--benchmarks", "arithmetic", "--limit", "200", "--max_new_tokens", "256", "--max_model_len", "1024"]
    command += ["--dtype", "float32", "--template", "no", "--output_dir", str(tmp_path / "eval")]
    log = tmp_path / "eval.log"
    with log.open("w") as stream:
        top = subprocess.Popen(command, cwd=REPO_ROOT, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "eval/samples.jsonl").is_file():  # the engine is up and generating
            assert top.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        tree = {pid: _start_time(pid) for pid in descendants(top.pid)}
        worker = psutil.Process(top.pid).children()[0].pid  # the process that loaded vLLM
        assert len(tree) >= 2, tree  # the worker and vLLM's engine process(es)
        os.kill(top.pid if victim == "command" else worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _tree_alive(tree) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _tree_alive(tree), (_tree_alive(tree), log.read_text()[-2000:])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(top.pid, signal.SIGKILL)
