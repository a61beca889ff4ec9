"""What rerunning a training command does in an output folder that already holds a run: the folder records the
method it trains (`grpo_lambda_run.json`), and another method is refused; a run that reached `max_steps` is done
(it says so and trains nothing; extending it is an explicit higher `max_steps`); anything else resumes from its last
checkpoint (checkpoints.checkpoint_to_resume)."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import checkpoint_state
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


def finished_step(checkpoint: str | None, max_steps: int) -> int | None:
    """The step `checkpoint` reached if that is already `max_steps` or more (the run is done), else None (also for
    an incomplete checkpoint: checkpoints.checkpoint_state)."""
    if checkpoint is None or max_steps <= 0:
        return None
    state = checkpoint_state(checkpoint)
    step = 0 if state is None else state.get("global_step", 0)
    return step if step >= max_steps else None
