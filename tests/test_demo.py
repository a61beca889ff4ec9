"""`make demo` at its smallest, end to end on the embedded SmolLM2."""

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_make_demo_small(tmp_path):
    """SFT → GRPO and GRPO-λ → evaluation on the arithmetic held-out split and the shipped suite → tables and PNG;
    methods are named by their tags in the tables and the run folders."""
    output_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.demo",
            "--size",
            "small",
            "--backend",
            "transformers",
            "--output_dir",
            str(output_dir),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
        env={
            **os.environ,
            "GRPO_LAMBDA_CACHE": os.environ.get("GRPO_LAMBDA_CACHE", str(tmp_path / "cache")),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), *sys.path]),
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (output_dir / "results.md").read_text()
    assert all(f"| {name} | " in table for name in ("sft", "grpo", "eps_trace-both-0.99"))
    assert "| model | arithmetic | aime | amc | math | minerva | olympiad_bench | average |" in table
    assert "| method | training reward, mean of each pass |" in table
    assert f"table: {output_dir / 'results.md'}" in result.stdout
    assert (output_dir / "plots" / "training_runs.png").stat().st_size > 10_000
    assert (output_dir / "eps_trace-both-0.99" / "model.safetensors").is_file()
