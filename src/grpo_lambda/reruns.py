"""What rerunning a training command does in an output folder that already holds a run: the folder records the
method it trains (`grpo_lambda_run.json`), and another method is refused; a run whose final model was saved at
`max_steps` is done (it says so and trains nothing; extending it is an explicit higher `max_steps`); anything else
resumes from its newest complete checkpoint (checkpoints.checkpoint_to_resume)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import GRPOLambdaError
from .records import replace_file

RUN_RECORD = "grpo_lambda_run.json"


def claim_output_dir(output_dir: str, record: dict, write: bool) -> None:
    """Checks `record` (its `method` tag, model and dataset) against the one `output_dir` keeps, and writes it there
    when there is none and `write` (the main process). Raises when the folder trains another method."""
    path = Path(output_dir) / RUN_RECORD
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("method") != record["method"]:
            raise GRPOLambdaError(
                f"{output_dir} holds a {kept.get('method')} run; this command trains {record['method']}. Give it "
                "its own output folder (--output_dir), or train the folder's method to resume it."
            )
        return
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps(record, indent=2) + "\n")


def finished_step(output_dir: str, max_steps: int) -> int | None:
    """The step the run in `output_dir` finished at (its final model saved: `mark_finished`) if that is `max_steps`
    or more, else None. A run killed after its last checkpoint but before its final model was fully written is not
    finished: it resumes from that checkpoint, trains no step and saves the final model again."""
    step = final_step(output_dir)
    return step if step is not None and max_steps > 0 and step >= max_steps else None


def final_step(output_dir: str) -> int | None:
    """The step whose final model the run in `output_dir` saved (`mark_finished`), or None."""
    path = Path(output_dir) / RUN_RECORD
    return json.loads(path.read_text()).get("finished_step") if path.is_file() else None


def mark_finished(output_dir: str, step: int) -> None:
    """Records that the final model of `step` is saved: called after the model is written, so a kill before leaves
    the run unfinished."""
    path = Path(output_dir) / RUN_RECORD
    record = json.loads(path.read_text()) if path.is_file() else {}
    replace_file(path, json.dumps({**record, "finished_step": step}, indent=2) + "\n")
