"""The benchmark scripts run (tiny sizes, one round) and print their tables; their numbers are not checked."""

import runpy
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(SCRIPTS / name), run_name="__main__")


def test_bench_traces_prints_every_op(monkeypatch, capsys):
    run_script("bench_traces.py", ["--lengths", "64", "--repeats", "1", "--device", "cpu"], monkeypatch)
    out = capsys.readouterr().out
    for op in ("grpo", "dense", "on-policy", "off-policy", "eps-weight"):
        assert f" {op} " in out
    run_script("bench_traces.py", ["--lengths", "64", "--repeats", "1", "--dense-max-gib", "0"], monkeypatch)
    assert "skipped" in capsys.readouterr().out


def test_bench_step_runs_on_the_tiny_model(monkeypatch, capsys):
    """num_iterations = 2: TRL keeps old log-probabilities, so ε-trace takes the traced-sum (off-policy) path."""
    argv = ["--model", "tiny", "--rounds", "1", "--max_completion_length", "8", "--skip_generation"]
    argv += ["--variants", "eps_trace/both", "--num_iterations", "2"]
    run_script("bench_step.py", argv, monkeypatch)
    out = capsys.readouterr().out
    assert "eps_trace/both" in out and "× grpo" in out
