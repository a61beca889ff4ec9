"""Rerunning a training command in a folder that holds a run: another method is refused, a finished run is done."""

import json

import pytest

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
