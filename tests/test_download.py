"""make download: what a login node fetches for a model, a training set or a whole sweep, and the one line when it
cannot (offline). The download itself needs the Hub, which the tests do not reach."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from grpo_lambda.jobs.download import plan, sweep_inputs
from grpo_lambda.jobs.sweep import load_sweep, sbatch_command

ROOT = Path(__file__).resolve().parents[1]


def test_a_sweep_fetches_each_of_its_models_and_training_sets_once():
    models, datasets, _ = sweep_inputs("paper-1.5b")
    assert len(models) == 2 and len(datasets) == 2 + 72  # the RL runs start from the SFT runs' output
    assert plan(models, datasets) == (
        ["Qwen/Qwen2.5-Math-1.5B-Instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"],
        ["gsm8k", "math12k", "math-rl-16k", "orz-57k"],
    )
    # the tiny sweep: an embedded model and a built-in task, nothing to fetch
    assert plan(*sweep_inputs("tiny-cpu")[:2]) == ([], [])


def test_local_folders_and_built_in_tasks_are_not_fetched(tmp_path):
    assert plan([str(tmp_path), "embedded:SmolLM2-135M-Instruct", "org/m", "org/m"], ["arithmetic", "gsm8k"]) == (
        ["org/m"],
        ["gsm8k"],
    )


def test_offline_says_so_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lambda.jobs.download", "--model", "org/some-model"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "grpo_lambda: HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (unset HF_HUB_OFFLINE)."
    )


def test_a_sweeps_cache_reaches_its_jobs(tmp_path):
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["hf_home"] = str(tmp_path / "hf")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path, ROOT, tmp_path / "out")
    export = next(flag for flag in sbatch_command(sweep, [0], ROOT) if flag.startswith("--export="))
    assert export.endswith(f",HF_HOME={tmp_path / 'hf'}")
    assert sweep_inputs(str(path))[2] == str(tmp_path / "hf")
