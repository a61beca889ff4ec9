"""The benchmark scripts run (tiny sizes, one round) and print their tables; their numbers are not checked."""

import runpy
import sys
from pathlib import Path

import pytest

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
    argv += ["--variants", "eps_trace/both", "--num_iterations", "2", "--generation", "generate"]
    run_script("bench_step.py", argv, monkeypatch)
    out = capsys.readouterr().out
    assert "eps_trace/both" in out and " trl " in out and "× trl" in out  # stock TRL is the reference


@pytest.mark.slow
def test_the_real_step_in_miniature(monkeypatch, capsys):
    """scripts/gpu_check.sh's real step, shrunk for a CPU: Qwen2.5-Math-1.5B's architecture built at random (here one
    small layer and a 2 048-token vocabulary, the tiny tokenizer padded to it), EOS suppressed so every completion has
    the length asked for, one table row per length."""
    argv = ["--model", "random:Qwen2.5-Math-1.5B", "--config", "hidden_size=64", "intermediate_size=128"]
    argv += [
        "num_hidden_layers=1",
        "num_attention_heads=1",
        "num_key_value_heads=1",
        "vocab_size=2048",
        "--batch",
        "4",
    ]
    argv += ["--num_generations", "2", "--suppress_eos", "--max_completion_length", "6", "12", "--skip_generation"]
    argv += ["--generation", "generate", "--rounds", "1", "--variants", "eps_weight/both", "--gradient_checkpointing"]
    run_script("bench_step.py", argv, monkeypatch)
    out = capsys.readouterr().out
    assert "completion lengths [6, 6, 6, 6]" in out and "completion lengths [12, 12, 12, 12]" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("generate ") and "without" in line]
    assert [(row[1], row[4]) for row in rows] == [
        ("6", "trl"),
        ("6", "eps_weight/both"),
        ("12", "trl"),
        ("12", "eps_weight/both"),
    ]


def test_peak_memory_counts_only_what_the_op_allocates(monkeypatch):
    """A view of an input (on-policy TRL passes log πθ.detach() as log πold) allocates nothing; the op's own
    temporaries count. Once a bug: the tracker counted the input's storage when the op took a view of it."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import torch

    from bench_traces import grpo_loss, make_inputs, peak_bytes

    inputs = make_inputs(4, 256, torch.device("cpu"))
    separate = peak_bytes(lambda x, old, mask, adv: grpo_loss(x, old, mask, adv[:, None]), inputs, torch.device("cpu"))
    view = peak_bytes(
        lambda x, old, mask, adv: grpo_loss(x, x.detach(), mask, adv[:, None]), inputs, torch.device("cpu")
    )
    per_token = peak_bytes(  # [B, T] advantages, kept for the backward like ε-weight's: one float32 per token
        lambda x, old, mask, adv: grpo_loss(x, old, mask, adv[:, None] * torch.ones_like(x)),
        inputs,
        torch.device("cpu"),
    )
    assert separate > 0 and view == separate
    assert per_token >= separate + 4 * 4 * 256
