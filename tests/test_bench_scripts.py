"""The benchmark scripts run (tiny sizes, one round) and print their tables; their numbers are not checked. The GPU\ncheck (scripts/gpu_check.sh) runs in miniature on the CPU."""

import json
import os
import re
import runpy
import subprocess
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


def test_bench_checkpoint_prints_the_cost_of_a_save(monkeypatch, capsys):
    run_script("bench_checkpoint.py", ["--saves", "1"], monkeypatch)
    out = capsys.readouterr().out.splitlines()
    header = out.index(next(line for line in out if line.split()[:3] == ["save", "s", "(median)"]))
    seconds, total, model, optimizer, per_parameter, _ = map(float, out[header + 1].split())
    assert seconds > 0 and total >= model + optimizer and optimizer > model  # AdamW: two moments per weight


TABLE_ROW = re.compile(r"^(generate|vllm) +(\d+) +(with|without) generation +(\S+) ")
MEASURING = re.compile(r"^(generate|vllm): completion lengths \[([\d, ]+)\] \(max (\d+)\)")


@pytest.mark.slow
def test_gpu_check_in_miniature_prints_each_table_as_it_is_measured(tmp_path):
    """scripts/gpu_check.sh --miniature: every part of the GPU check at toy sizes on the CPU, under the same time
    limits (they add up to one 9-minute device call). Each step table appears before the next one is measured (before,
    bench_step.py printed them all at the end, and a time limit lost every one), and gpu_check.json holds every part
    and every row printed. The real step is Qwen2.5-Math-1.5B's architecture shrunk (one small layer, a 2 048-token
    vocabulary), EOS suppressed so every completion has the length asked for, one table per length."""
    script = (SCRIPTS / "gpu_check.sh").read_text()
    limited = [line for line in script.splitlines() if re.search(r"\btimeout\b", line.split("#")[0])]
    assert len(limited) == 1 and '"$limit"' in limited[0], limited  # every part under part()'s own limit
    output = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable}
    command = ["bash", str(SCRIPTS / "gpu_check.sh"), "--miniature", str(output)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    limits = dict(re.findall(r"(\w+)=(\d+)s", lines[0]))
    assert list(limits) == ["environment", "install", "trace_tests", "bench_traces", "bench_step", "real_step"]
    assert sum(map(int, limits.values())) <= 540 and f"(budget: {sum(map(int, limits.values()))} s)" in lines[0]

    events = []  # ("measuring" | "row", backend, tokens) in the order printed
    for line in lines:
        if match := MEASURING.match(line):
            lengths = [int(n) for n in match[2].split(",")]
            events.append(("measuring", match[1], int(match[3])))
            assert len(lengths) == 4 and (lengths == [int(match[3])] * 4 or match[3] == "8"), line
        elif match := TABLE_ROW.match(line):
            events.append(("row", match[1], int(match[2])))
    tables = [event[1:] for event in events if event[0] == "measuring"]
    vllm = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0
    assert tables == [("generate", 8), *([("vllm", 8)] if vllm else []), ("generate", 6), ("generate", 12)], tables
    for table, following in zip(tables, tables[1:] + [None]):
        rows = [i for i, event in enumerate(events) if event == ("row", *table)]
        assert rows, table
        if following is not None:  # printed before the next table's measurement began
            assert max(rows) < events.index(("measuring", *following)), (table, following)

    report = json.loads((output / "gpu_check.json").read_text())
    assert [(p["part"], p["status"]) for p in report["parts"]] == [
        ("environment", "ok"),
        ("install", "skipped"),  # no .whl/ here; this interpreter has TRL
        ("trace_tests", "ok"),
        ("bench_traces", "ok"),
        ("bench_step", "ok"),
        ("real_step", "ok"),
    ]
    real = [(row["tokens"], row["variant"]) for row in report["real_step"]["rows"]]
    assert real == [(6, "trl"), (6, "eps_weight/both"), (12, "trl"), (12, "eps_weight/both")]
    printed = [event[1:] for event in events if event[0] == "row"]
    saved = [
        (row["generation"], row["tokens"]) for name in ("bench_step", "real_step") for row in report[name]["rows"]
    ]
    assert printed == saved and all(len(row["seconds"]) == 1 for row in report["real_step"]["rows"])


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
