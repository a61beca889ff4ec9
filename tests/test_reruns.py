"""Rerunning a training command in a folder that holds a run: another method is refused, a finished run is done."""

import json

import pytest

from conftest import REPO_ROOT
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.reruns import RUN_RECORD, claim_output_dir, finished_step

TRACE = {"method": "eps_trace-both-0.99", "model": "m", "dataset": "arithmetic"}


def test_a_folder_keeps_its_method_and_refuses_another(tmp_path):
    claim_output_dir(str(tmp_path / "run"), TRACE, write=False)  # another rank: reads, never writes
    assert not (tmp_path / "run" / RUN_RECORD).exists()
    claim_output_dir(str(tmp_path / "run"), TRACE, write=True)
    assert json.loads((tmp_path / "run" / RUN_RECORD).read_text()) == TRACE
    claim_output_dir(str(tmp_path / "run"), TRACE, write=True)  # the same command again: resumes
    with pytest.raises(GRPOLambdaError, match=r"holds a eps_trace-both-0.99 run; this command trains grpo") as raised:
        claim_output_dir(str(tmp_path / "run"), {**TRACE, "method": "grpo"}, write=True)
    assert "\n" not in str(raised.value) and "--output_dir" in str(raised.value)


def test_a_run_at_max_steps_is_done(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert finished_step(str(checkpoint), max_steps=4) == 4
    assert finished_step(str(checkpoint), max_steps=6) is None  # an explicit increase extends it
    assert finished_step(str(checkpoint), max_steps=-1) is None  # epochs, not steps: the Trainer decides
    assert finished_step(None, max_steps=4) is None


def test_the_grpo_entry_point_stops_before_loading_anything(tmp_path):
    """`grpo.main` in a finished folder returns 0 and trains nothing; in another method's folder it refuses. Both
    before the model loads (the default recipe's embedded model is never built here)."""
    from grpo_lambda import grpo
    from grpo_lambda.configs import parse_grpo_args

    recipe = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
    output_dir = tmp_path / "run"

    def arguments(*extra: str):
        argv = ["--config", str(recipe), "--output_dir", str(output_dir), "--use_cpu", "true", "--max_steps", "2"]
        return parse_grpo_args([*argv, "--report_to", "none", *extra])

    (output_dir / "checkpoint-2").mkdir(parents=True)
    (output_dir / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert grpo.main(*arguments()) == 0
    assert json.loads((output_dir / RUN_RECORD).read_text())["method"] == "eps_trace-both-0.99"
    assert sorted(p.name for p in output_dir.iterdir()) == ["checkpoint-2", RUN_RECORD]  # nothing trained or saved
    with pytest.raises(GRPOLambdaError, match="holds a eps_trace-both-0.99 run; this command trains grpo"):
        grpo.main(*arguments("--loss_variant", "grpo"))
