"""CI (.ci/run) runs the SLURM tests or fails: a SLURM install that fails stops it, and a SLURM test that cannot run
in CI fails instead of skipping (a green CI once hid that none of them had run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fake_tools(bin_dir: Path, apt_get_status: int) -> Path:
    """`make` that records its targets and GRPO_LAMBDA_REQUIRE_SLURM, and `apt-get` that ends with `apt_get_status`
    (100: what a node without network gets), in front of the system's tools; the log of make's calls."""
    bin_dir.mkdir()
    calls = bin_dir / "make.log"
    (bin_dir / "make").write_text(f'#!/bin/sh\necho "$1 ${{GRPO_LAMBDA_REQUIRE_SLURM:-unset}}" >> {calls}\n')
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\nexit {apt_get_status}\n")
    for tool in ("make", "apt-get"):
        (bin_dir / tool).chmod(0o755)
    return calls


def _ci(tmp_path: Path, apt_get_status: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = _fake_tools(tmp_path / "bin", apt_get_status)
    # no /usr/sbin, /sbin: slurmctld and slurmd (Debian puts them there) are missing, so local_cluster.sh installs
    # as a clean machine runs it: not inside a CI run that already set the variable it checks
    env = {k: v for k, v in os.environ.items() if k != "GRPO_LAMBDA_REQUIRE_SLURM"}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    result = subprocess.run(["bash", ".ci/run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.is_file() else []


def test_ci_stops_when_slurm_cannot_be_installed(tmp_path):
    """Before, `.ci/run` printed "its tests will skip" and went on to a green run."""
    if os.geteuid() != 0:  # local_cluster.sh install refuses before apt-get without root: CI stops all the same
        result, calls = _ci(tmp_path, apt_get_status=0)
        assert result.returncode != 0 and calls == ["install unset"], (result.stderr, calls)
        return
    result, calls = _ci(tmp_path, apt_get_status=100)
    assert result.returncode != 0, result.stdout + result.stderr
    assert calls == ["install unset"], calls  # neither lint nor the tests ran


def test_ci_runs_the_tests_with_the_slurm_tests_required(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("local_cluster.sh install needs root (CI runs as root)")
    result, calls = _ci(tmp_path, apt_get_status=0)
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == ["install unset", "lint 1", "test 1", "test-slow 1"], calls


def _slurm_test(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    """One cluster test of tests/test_slurm.py on a PATH without SLURM (this interpreter's folder only)."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    env.pop("GRPO_LAMBDA_REQUIRE_SLURM", None)
    if require:
        env["GRPO_LAMBDA_REQUIRE_SLURM"] = "1"
    test = "tests/test_slurm.py::test_warning_signal_checkpoints_requeues_and_resumes"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", test]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_slurm_test_that_cannot_run_skips_here_and_fails_in_ci(tmp_path):
    local = _slurm_test(tmp_path, require=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
    ci = _slurm_test(tmp_path, require=True)
    assert ci.returncode != 0 and "1 error" in ci.stdout, ci.stdout[-2000:]
    assert "SLURM not installed" in ci.stdout and "GRPO_LAMBDA_REQUIRE_SLURM=1" in ci.stdout
