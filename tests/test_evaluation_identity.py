"""An evaluation folder knows what it holds (issue 34, part 1; issue 33, item 5): its identity is recorded when it
starts and a resume with another one is refused; regrade changes grades only; the default folder is named after the
model; compare and tables refuse what cannot be compared. results.json says what was run and how it went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation_runs import eval_config
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation import compare
from grpo_lambda.evaluation.backends import start_up_cause
from grpo_lambda.evaluation.config import default_output_dir
from grpo_lambda.evaluation.evaluate import evaluate, regrade
from grpo_lambda.evaluation.store import IDENTITY


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    from grpo_lambda.testbench.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("other-tiny"), seed=1)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("model", "model_fingerprint"),
        ("max_new_tokens", "max_new_tokens: 8 → 6"),
        ("dtype", "dtype: float32 → bfloat16"),
        ("template", "template: qwen_math → no"),
        ("suite", "the aime problems of the suite"),
    ],
)
def test_a_resume_with_another_identity_is_refused(tiny_model_dir, other_model, tmp_path, change, named):
    """Before, evaluating another MODEL, SUITE, --max_new_tokens or --dtype into a folder reused its samples ("4 already
    evaluated, 2 to generate") and results.json named the new settings."""
    evaluate(eval_config(tmp_path, tiny_model_dir, limit=1))
    before = (tmp_path / "eval/samples.jsonl").read_text()
    if change == "suite":  # a copy of AIME with one problem edited
        suite = tmp_path / "suite"
        suite.mkdir()
        from grpo_lambda.evaluation.suite import DEFAULT_SUITE

        for name in ("aime", "minerva"):
            lines = (DEFAULT_SUITE / f"{name}.jsonl").read_text().splitlines()
            if name == "aime":
                first = json.loads(lines[0])
                lines[0] = json.dumps({**first, "answer": "12345"})
            (suite / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        overrides = {"suite": str(suite)}
    else:
        overrides = {
            "model": {},
            "max_new_tokens": {"max_new_tokens": 6},
            "dtype": {"dtype": "bfloat16"},
            "template": {"template": "no"},
        }[change]
    with pytest.raises(GRPOLambdaError, match=f"holds another evaluation .*{named}") as raised:
        evaluate(eval_config(tmp_path, other_model if change == "model" else tiny_model_dir, limit=1, **overrides))
    assert "\n" not in str(raised.value) and "--output_dir" in str(raised.value)
    assert (tmp_path / "eval/samples.jsonl").read_text() == before
    # what a resume may change: more problems (LIMIT), more benchmarks, the batch size
    grown = evaluate(eval_config(tmp_path, tiny_model_dir, limit=2, batch_size=1))
    assert all(values["n"] == 2 for values in grown["benchmarks"].values())


def test_the_default_folder_is_named_after_the_resolved_model(tmp_path, monkeypatch):
    """Before, `make evaluate MODEL=runs/base/` (tab completion's slash) and then another model both went to
    data/eval/ (`notdir` of a path ending in /), the second relabelling the first's samples; MODEL=<folder>/.. wrote
    into data/."""
    monkeypatch.chdir(tmp_path)
    for name in ("runs/base", "runs/other", "data/m/grpo/gsm8k_grpo"):
        (tmp_path / name).mkdir(parents=True)
    assert default_output_dir("runs/base/") == default_output_dir("runs/base") == default_output_dir("./runs/base")
    assert default_output_dir("runs/base") != default_output_dir("runs/other")
    assert default_output_dir("runs/base").startswith("data/eval/base-")
    assert default_output_dir("runs/base/..") not in ("data", "data/eval", "data/eval/")
    assert default_output_dir("runs/base/..").startswith("data/eval/runs-")
    assert default_output_dir("data/m/grpo/gsm8k_grpo/") == "data/eval/m/grpo/gsm8k_grpo"  # the tables find it
    assert default_output_dir("Qwen/Qwen2.5-Math-1.5B-Instruct") == "data/eval/hub/Qwen/Qwen2.5-Math-1.5B-Instruct"
    assert default_output_dir("embedded:SmolLM2-135M-Instruct") == "data/eval/embedded/SmolLM2-135M-Instruct"


def test_results_json_says_what_was_run_and_how_it_went(tiny_model_dir, tmp_path):
    """Provenance: the engine and its version, the model's fingerprint, the suite's, the settings, the generation's
    time and tokens/s; per benchmark the truncation rate (8 new tokens: the tiny model is cut every time), length
    quantiles, and the lengths of right and wrong completions."""
    results = evaluate(eval_config(tmp_path, tiny_model_dir, samples=4, temperature=1.0))
    identity = results["identity"]
    assert identity["model"] == str(tiny_model_dir) and len(identity["model_fingerprint"]) == 16
    assert set(identity["suite_fingerprints"]) == {"aime", "minerva"} and identity["max_new_tokens"] == 8
    assert identity["sampling"] == {"temperature": 1.0, "top_p": 1.0, "seed": 0}
    assert json.loads((tmp_path / "eval" / IDENTITY).read_text()) == identity
    engine = results["provenance"]["engine"]
    assert engine["engine"] == "transformers" and engine["version"]
    generation = results["provenance"]["generation"]
    assert generation["tokens"] == 2 * 2 * 4 * 8 and generation["tokens_per_second"] > 0
    samples = [json.loads(line) for line in (tmp_path / "eval/samples.jsonl").read_text().splitlines()]
    for name, values in results["benchmarks"].items():
        rows = [s for s in samples if s["benchmark"] == name]
        assert values["truncation_rate"] == sum(s["truncated"] for s in rows) / len(rows) == 1.0
        assert values["generation_length"]["median"] == 8 and values["generation_length"]["p90"] == 8
        assert set(values["generation_length"]["paper"]) == {"mean_correct", "mean_wrong"}


def test_regrade_changes_grades_only(tiny_model_dir, tmp_path):
    """Before, `make regrade` rewrote results.json's settings with defaults (16 → 3 000 tokens, the limit gone, the
    backend vllm), after which compare accepted pairs it had refused; relabelled qwen_math samples as r1 given
    TEMPLATE=r1; dropped a torn last line silently; after SAMPLES shrank, reported samples=1 with n=8."""
    results = evaluate(eval_config(tmp_path, tiny_model_dir, samples=4, temperature=1.0))
    evaluate(eval_config(tmp_path, tiny_model_dir, samples=2, temperature=1.0))  # SAMPLES shrank: 4 stay on disk
    regraded = regrade(tmp_path / "eval")
    assert regraded["config"] == {**results["config"], "samples": 2}
    assert regraded["config"]["max_new_tokens"] == 8 and regraded["config"]["limit"] == 2
    assert regraded["backend"] == "transformers" and regraded["identity"] == results["identity"]
    assert all(v["n"] == 4 and v["samples_per_problem"] == 2 for v in regraded["benchmarks"].values())
    with pytest.raises(GRPOLambdaError, match="generated with template qwen_math, not r1"):
        regrade(tmp_path / "eval", template="r1")
    samples = tmp_path / "eval/samples.jsonl"
    samples.write_bytes(samples.read_bytes()[:-20])  # a kill mid-write
    with pytest.raises(GRPOLambdaError, match="ends in a torn line .* run that evaluation again"):
        regrade(tmp_path / "eval")


def test_compare_refuses_a_folder_twice_and_another_backend_or_dtype(tiny_model_dir, tmp_path):
    a = evaluate(eval_config(tmp_path / "a", tiny_model_dir, limit=1))["config"]["output_dir"]
    with pytest.raises(GRPOLambdaError, match="given twice"):
        compare.compare([Path(a)], [Path(a) / "."])
    b = evaluate(eval_config(tmp_path / "b", tiny_model_dir, limit=1, dtype="bfloat16"))["config"]["output_dir"]
    with pytest.raises(GRPOLambdaError, match=r"different dtype \('float32' vs 'bfloat16'\)"):
        compare.compare([Path(a)], [Path(b)])


def test_the_tables_leave_out_what_is_not_the_papers_protocol(tmp_path, capsys):
    from grpo_lambda.evaluation.tables import collect_results, load_paper
    from test_tables import write_results

    folder = tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval"
    write_results(folder, [0.1, 0.4, 0.7, 0.2, 0.3])
    results = json.loads((folder / "results.json").read_text())
    results["config"] = {"limit": 3, "max_new_tokens": 16, "max_model_len": 4096}
    (folder / "results.json").write_text(json.dumps(results))
    assert collect_results(tmp_path, load_paper()) == {}
    assert "not the paper's protocol (limit=3, max_new_tokens=16): left out" in capsys.readouterr().out


def test_vllms_start_up_error_shows_its_cause():
    """Before, the one line was pydantic's footer ("For further information visit …") where the cause was
    `max_model_len 4096 > max_position_embeddings 1024`."""
    cause = ValueError(
        "1 validation error for ModelConfig\n  Value error, User-specified max_model_len (4096) is greater than the "
        "derived max_model_len (max_position_embeddings=1024) [type=value_error]\n"
        "    For further information visit https://errors.pydantic.dev/2.11/v/value_error"
    )
    error = RuntimeError("Engine creation failed")
    error.__cause__ = cause
    line = start_up_cause(error)
    assert "max_position_embeddings=1024" in line and "further information" not in line and "\n" not in line
