"""Training-curve and generation-length PNGs from real log and results layouts."""

import json

import matplotlib.image

from grpo_lambda.evaluation.plots import describe, main
from grpo_lambda.metrics_log import read_steps


def write_run(folder, rewards, trace=False, repeat_step=None):
    folder.mkdir(parents=True)
    lines = []
    for step, reward in enumerate(rewards, start=1):
        record = {
            "step": step,
            "loss": 0.1,
            "reward": reward,
            "kl": 0.001 * step,
            "completions/mean_length": 50 + step,
        }
        if trace:
            record["trace/credit_weight_mean"] = 20.0
        lines.append(json.dumps(record))
    if repeat_step is not None:  # a requeued run logs a step again; the last record wins
        lines.append(
            json.dumps({"step": repeat_step, "loss": 0.2, "reward": 9.0, "kl": 0.0, "completions/mean_length": 1})
        )
    lines.append(json.dumps({"step": len(rewards), "train_runtime": 1.0}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_training_and_generation_length_figures(tmp_path, capsys):
    base = tmp_path / "data" / "Qwen2.5-Math-1.5B-Instruct" / "grpo"
    write_run(base / "math12k_grpo", [0.1, 0.2, 0.3, 0.4], repeat_step=2)
    write_run(base / "math12k_eps_trace-both-0.99", [0.2, 0.3, 0.5, 0.6], trace=True)
    assert [r["reward"] for r in read_steps(base / "math12k_grpo" / "metrics.jsonl")] == [0.1, 9.0, 0.3, 0.4]
    group = "Qwen2.5-Math-1.5B-Instruct on math12k"
    assert describe(base / "math12k_eps_trace-both-0.99") == (group, "eps_trace-both-0.99")
    assert describe(base / "math12k_grpo") == (group, "grpo")
    assert describe(tmp_path / "elsewhere") == ("runs", "elsewhere")
    results = tmp_path / "eval"
    for name, length in (("grpo", 300.0), ("eps_trace-both-0.99", 280.0)):
        (results / name).mkdir(parents=True)
        per = {b: {"accuracy": 0.5, "mean_generation_length": length, "n": 3} for b in ("aime", "math")}
        (results / name / "results.json").write_text(json.dumps({"benchmarks": per}))

    runs = [str(p) for p in sorted(base.iterdir())]
    assert (
        main(["--runs", *runs, "--results", str(results), "--output_dir", str(tmp_path / "plots"), "--window", "2"])
        == 0
    )
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in printed] == [
        "training_Qwen2.5-Math-1.5B-Instruct_on_math12k.png",
        "generation_lengths.png",
    ]
    for path in printed:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0
