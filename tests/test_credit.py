"""The credit picture: per-token gradient weights of one completion under GRPO, ε-trace and ε-weight, against the
dense trace matrix (Eq. 17–18), the limit the paper states (λ = 0, `recent` is GRPO), and the command end to end."""

from __future__ import annotations

import html
import json
import re

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


def _graded(benchmark, index, sample, completion, paper, corrected, truncated):
    return {
        "benchmark": benchmark,
        "index": index,
        "sample": sample,
        "prompt": "What is 2 + 3?",
        "completion": completion,
        "tokens": 7,
        "truncated": truncated,
        "paper": {"correct": paper},
        "corrected": {"correct": corrected},
    }


ROWS = [
    _graded("arithmetic", 3, 0, "2 + 3 = 5\n5", True, True, False),
    _graded("arithmetic", 3, 1, "two plus three is six\nsix", False, True, True),
    _graded("arithmetic", 4, 0, "4 + 4 = 8", True, True, False),
    {"benchmark": "math", "index": 0, "prompt": "1 + 1?", "completion": "2"},  # before `sample`: sample 0
]


@pytest.fixture
def evaluation(tmp_path, tiny_model_dir):
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (folder / "results.json").write_text(json.dumps({"model": str(tiny_model_dir), "benchmarks": {}}))
    return folder


def _plotted_text(page: str, pieces: int) -> str:
    """The completion as the page's first block shows it (its token spans, unescaped)."""
    spans = re.findall(r'<span style="background:[^"]*" title="[^"]*">(.*?)</span>', page, re.S)[:pieces]
    return html.unescape("".join(spans).replace("↵<br>", "\n"))


@pytest.mark.parametrize(
    ("grade", "verdict"),
    [("paper", "incorrect (paper grade) → negative"), ("corrected", "correct (corrected grade) → positive")],
)
def test_the_command_plots_the_row_it_is_given(evaluation, tiny_model_dir, tmp_path, capsys, grade, verdict):
    """Before: no --sample, so sample 0 of a problem with several was the only one that could be drawn."""
    output = tmp_path / "out"
    argv = ["--results", str(evaluation), "--benchmark", "arithmetic", "--index", "3", "--sample", "1"]
    assert credit.main([*argv, "--grade", grade, "--output_dir", str(output)]) == 0
    row = ROWS[1]
    page = (output / "credit.html").read_text()
    pieces, _ = credit.score_completion(str(tiny_model_dir), row["prompt"], row["completion"])
    assert page.count("<span style=") == 3 * len(pieces) and "↵<br>" in page
    assert _plotted_text(page, len(pieces)) == row["completion"]
    assert verdict in html.unescape(page) and "truncated at the token limit (7 tokens)" in page
    assert html.escape(credit.WHY) in page and "class=bar" in page
    assert "arithmetic #3 sample 1" in capsys.readouterr().out
    assert (output / "credit.png").stat().st_size > 10_000


def test_left_out_options_pick_the_first_matching_row(evaluation):
    assert credit.find_sample(evaluation, None, None, None)["completion"] == ROWS[0]["completion"]
    assert credit.find_sample(evaluation, None, 4, None)["completion"] == ROWS[2]["completion"]
    assert credit.find_sample(evaluation, "arithmetic", None, 1)["completion"] == ROWS[1]["completion"]
    assert credit.find_sample(evaluation, "math", 0, 0)["completion"] == "2"  # no `sample` field: sample 0


@pytest.mark.parametrize(
    ("benchmark", "index", "sample", "message"),
    [
        ("arithmetic", 3, 2, "has no sample 2 of arithmetic #3; it has samples 0–1 (--sample)."),
        ("arithmetic", 5, None, "has no problem arithmetic #5; its problems: arithmetic 3–4."),
        (None, 7, None, "has no problem #7; its problems: arithmetic 3–4; math 0."),
        ("aime", None, None, "has no benchmark aime; its benchmarks: arithmetic, math."),
    ],
)
def test_a_missing_row_is_one_line_naming_what_exists(evaluation, benchmark, index, sample, message):
    with pytest.raises(GRPOLambdaError) as error:
        credit.find_sample(evaluation, benchmark, index, sample)
    assert str(error.value).endswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("row", "grade", "expected"),
    [
        (ROWS[0], "paper", ["correct (paper grade) → positive advantage", "finished before the token limit (7"]),
        (ROWS[1], "paper", ["incorrect (paper grade) → negative advantage", "truncated at the token limit (7"]),
        (ROWS[3], "paper", ["not graded by `paper` (make regrade)", "not recorded"]),
    ],
)
def test_the_outcome_states_grade_sign_and_truncation(row, grade, expected):
    notes = credit.outcome(row, grade)
    assert all(text in note for note, text in zip(notes, expected, strict=True))
    assert ("assumed from the grade alone" in notes[0]) == ("correct" in row.get(grade, {}))


def test_the_png_has_a_colour_bar(tmp_path):
    """Uniform weights leave every token white, so the scale's ends can only come from the colour bar."""
    import matplotlib.image

    rows = {"GRPO": np.ones(4)}
    image = matplotlib.image.imread(credit.render_png(["a", "b", "c", "d"], rows, "t", tmp_path / "c.png"))[..., :3]
    for end in (credit.LIMIT, -credit.LIMIT):
        assert (np.abs(image - np.array(credit._colour(end))).max(-1) < 0.02).any()


def test_the_page_escapes_what_the_model_wrote():
    rows = credit.token_weights(np.zeros(3), TraceSpec(1.0, 0.9, "both"))
    page = credit.render_html(["<script>", "&", "x"], rows, "<t>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&amp;" in page and "<title>&lt;t&gt;" in page
