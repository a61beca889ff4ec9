"""The credit picture: per-token gradient weights of one completion under GRPO, ε-trace and ε-weight, against the
dense trace matrix (Eq. 17–18), the limit the paper states (λ = 0, `recent` is GRPO), and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation import credit
from grpo_lambda.traces import TraceSpec, trace_matrix


@pytest.mark.parametrize("style", ["recent", "both"])
@pytest.mark.parametrize(("lam", "floor"), [(0.9, 0.0), (0.99, 0.05)])
def test_weights_are_the_dense_trace_matrix_read_both_ways(style, lam, floor):
    """ε-trace: token k's weight is column k's sum, Σ_t tr(t, t − k); ε-weight: row t applied to f(log π)."""
    trace = TraceSpec(1.0, lam, style, floor)
    logps = -torch.rand(37, dtype=torch.float64) * 4
    weights = credit.token_weights(logps.numpy(), trace)
    matrix = trace_matrix(37, trace)  # [t, k]
    assert np.array_equal(weights["GRPO"], np.ones(37))
    np.testing.assert_allclose(weights["ε-trace"], matrix.sum(0).numpy(), rtol=1e-12)
    soft = 1 + torch.sigmoid(logps - 1)
    np.testing.assert_allclose(weights["ε-weight"], (matrix @ soft).numpy(), rtol=1e-12)


def test_lambda_zero_recent_gives_grpos_picture():
    weights = credit.token_weights(-np.ones(12), TraceSpec(1.0, 0.0, "recent"))
    assert np.array_equal(weights["ε-trace"], weights["GRPO"])
    assert np.ptp(credit.relative(weights["ε-weight"])) == 0  # one soft-clamped value per token: uniform


def test_the_command_renders_an_evaluation_sample(tiny_model_dir, tmp_path):
    folder = tmp_path / "eval"
    folder.mkdir()
    sample = {"benchmark": "arithmetic", "index": 3, "prompt": "What is 2 + 3?", "completion": "2 + 3 = 5\n5"}
    (folder / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    (folder / "results.json").write_text(json.dumps({"model": str(tiny_model_dir), "benchmarks": {}}))
    assert credit.main(["--results", str(folder), "--index", "3", "--output_dir", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "credit.html").read_text()
    pieces, _ = credit.score_completion(str(tiny_model_dir), sample["prompt"], sample["completion"])
    assert page.count("<span") == 3 * len(pieces) and "↵<br>" in page
    assert (tmp_path / "out" / "credit.png").stat().st_size > 10_000
    with pytest.raises(GRPOLambdaError, match="no sample arithmetic #4"):
        credit.main(["--results", str(folder), "--benchmark", "arithmetic", "--index", "4"])


def test_the_page_escapes_what_the_model_wrote():
    rows = credit.token_weights(np.zeros(3), TraceSpec(1.0, 0.9, "both"))
    page = credit.render_html(["<script>", "&", "x"], rows, "<t>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page and "<title>&lt;t&gt;" in page
