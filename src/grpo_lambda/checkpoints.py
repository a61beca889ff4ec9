"""Checkpoints that are complete or absent, and the checkpoint a run resumes from.

A checkpoint is written into a staging folder, `<output_dir>/.checkpoint-N.partial/checkpoint-N`, and renamed to
`<output_dir>/checkpoint-N` by one process once every process has written its part (`AtomicCheckpoints`). A kill or
a full disk mid-save leaves the previous checkpoints intact and a staging folder that no resume, no rotation
(`save_total_limit`) and no later save reads; the next resume removes it (`checkpoint_to_resume`).

Why a rename rather than a completeness marker written after the save: transformers deletes the checkpoints beyond
`save_total_limit` (1 in the paper's sweeps) inside its own save, before a marker written after it could exist, so a
kill there would leave no complete checkpoint at all. With the rename, old checkpoints are deleted only once the new
one is in place.

A `checkpoint-N` folder is complete when its files are (`checkpoint_problem`): a readable trainer state (the file
transformers writes last), model weights whole, and the optimizer's state. Every one this module renames into place
is; a folder damaged since (a truncated weights file, a deleted optimizer state) is not resumed from.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .errors import GRPOLambdaError

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR, checked by check_checkpoint_seam
TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
_STAGING = re.compile(rf"^\.{CHECKPOINT_PREFIX}-\d+\.partial$")
# The transformers Trainer methods AtomicCheckpoints overrides, with the leading parameters it passes on.
TRANSFORMERS_SEAM: dict[str, tuple[str, ...]] = {
    "_save_checkpoint": ("self", "model", "trial"),
    "_get_output_dir": ("self", "trial"),
}
ROTATE_PARAMETERS = ("output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime")


def staging_folder(run_dir: str, step: int) -> str:
    """Where the checkpoint of `step` is written before it is complete: the same name on every process."""
    return os.path.join(run_dir, f".{CHECKPOINT_PREFIX}-{step}.partial")


def checkpoint_state(folder: str | os.PathLike) -> dict | None:
    """The trainer state saved in `folder` (its `global_step`, ...) if `folder` is a complete checkpoint, else None."""
    try:
        state = json.loads((Path(folder) / TRAINER_STATE).read_text())
    except (OSError, ValueError):  # absent, or torn by a kill mid-write (folders not written by AtomicCheckpoints)
        return None
    return state if isinstance(state, dict) else None


def _cut_short(path: Path) -> bool:
    """Whether a safetensors file is shorter than its own header says (a kill or a full disk mid-write)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            if size < 8 + length:
                return True
            header = json.loads(stream.read(length))
    except (OSError, ValueError):
        return True
    ends = [value["data_offsets"][1] for key, value in header.items() if key != "__metadata__"]
    return size < 8 + length + max(ends, default=0)


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete checkpoint, or None: checked by its files, as a resume needs them — a readable
    trainer state, model weights whole (a safetensors file shorter than its header says was cut mid-write), and the
    optimizer's state (optimizer.pt, or DeepSpeed's global_step*/ shards): without it a resume would go on with a
    fresh optimizer."""
    folder = Path(folder)
    if checkpoint_state(folder) is None:
        return f"no readable {TRAINER_STATE}"
    shards = list(folder.glob("global_step*/*.pt"))
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin"), *(p for p in shards if "model_states" in p.name)]
    if not weights:
        return "no model weights"
    cut = [p.name for p in folder.glob("*.safetensors") if _cut_short(p)]
    if cut:
        return f"{cut[0]} cut short"
    if not (folder / "optimizer.pt").is_file() and not any("optim_states" in p.name for p in shards):
        return "no optimizer state"
    return None


def checkpoint_to_resume(training_args) -> str | None:
    """The checkpoint a run resumes from: `resume_from_checkpoint` if set (refused unless complete), else the newest
    complete `checkpoint-N` in `output_dir`, else None.

    Walking from the newest step down, each incomplete checkpoint met before the first complete one is named in a
    warning and removed by the process that saves (`should_save`), with every staging folder an interrupted save
    left: kept, it would count as the newest checkpoint for transformers' rotation (which could delete the complete
    ones below `save_total_limit`), and it would sit where a later save of that step goes. Other processes only read.
    """
    explicit = training_args.resume_from_checkpoint
    if explicit is not None:
        problem = checkpoint_problem(explicit)
        if problem is not None:
            raise GRPOLambdaError(
                f"resume_from_checkpoint={explicit} is not a complete checkpoint ({problem}: its save was "
                "interrupted or the folder damaged); name a complete one, or leave it unset to resume from the newest "
                "complete checkpoint in output_dir."
            )
        return explicit
    output_dir = Path(training_args.output_dir)
    if not output_dir.is_dir():
        return None
    steps = {}
    for entry in output_dir.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir():
            steps[int(match.group(1))] = entry
    chosen, skipped = None, []
    for step in sorted(steps, reverse=True):
        problem = checkpoint_problem(steps[step])
        if problem is None:
            chosen = steps[step]
            break
        skipped.append((steps[step], problem))
    if training_args.should_save:
        resumed = chosen if chosen is not None else "step 0 (no complete checkpoint)"
        for folder, problem in skipped:
            logger.warning("%s is incomplete (%s); removed it, resuming from %s", folder, problem, resumed)
            shutil.rmtree(folder)
        for entry in output_dir.iterdir():
            if _STAGING.match(entry.name) and entry.is_dir():
                logger.warning("%s: removed what an interrupted checkpoint save left", entry)
                shutil.rmtree(entry)
    return None if chosen is None else str(chosen)


def check_checkpoint_seam() -> None:
    """Raises ImportError, in one line, unless transformers' Trainer has the methods AtomicCheckpoints overrides (with
    the leading parameters it passes on), names checkpoints `checkpoint-<step>`, and rotates them with
    `trainer_utils.rotate_checkpoints(output_dir, save_total_limit, best_model_checkpoint, use_mtime, ...)`."""
    import transformers
    from transformers import Trainer, trainer_utils

    fix = f"grpo_lambda's checkpoints hook transformers' Trainer save (found transformers=={transformers.__version__})"
    for name, expected in TRANSFORMERS_SEAM.items():
        method = getattr(Trainer, name, None)
        found = tuple(inspect.signature(method).parameters)[: len(expected)] if callable(method) else ()
        if found != expected:
            raise ImportError(f"{fix}; its Trainer.{name} is not {name}({', '.join(expected)}, …) here.")
    if getattr(trainer_utils, "PREFIX_CHECKPOINT_DIR", None) != CHECKPOINT_PREFIX:
        raise ImportError(f"{fix}; its checkpoint folders are not named {CHECKPOINT_PREFIX}-<step> here.")
    rotate = getattr(trainer_utils, "rotate_checkpoints", None)
    found = tuple(inspect.signature(rotate).parameters)[: len(ROTATE_PARAMETERS)] if callable(rotate) else ()
    if found != ROTATE_PARAMETERS:
        raise ImportError(
            f"{fix}; its trainer_utils.rotate_checkpoints is not rotate_checkpoints({', '.join(ROTATE_PARAMETERS)}, …)."
        )


class AtomicCheckpoints:
    """Trainer mixin, listed before the Trainer class: each checkpoint is complete or absent.

    The Trainer's own save (and its subclass's, e.g. TRL's GRPOTrainer writing its model card and entropy state)
    runs unchanged, with `_get_output_dir` answering the staging folder for its duration: every process writes its
    files (DeepSpeed ZeRO: its shards) to `.checkpoint-N.partial/checkpoint-N`, the same name everywhere. After a
    barrier, the saving process (`should_save`, one per run on a shared filesystem) renames it to `checkpoint-N`,
    then deletes the checkpoints beyond `save_total_limit` (transformers' own `rotate_checkpoints`, which inside the
    save only saw the staging folder); a last barrier keeps every process in the save until the checkpoint is in
    place. A staging folder left by a save interrupted at the same step is removed first.
    """

    def __init__(self, *args, **kwargs):
        check_checkpoint_seam()
        self._staging_run_dir: str | None = None
        super().__init__(*args, **kwargs)

    def _get_output_dir(self, trial):
        if self._staging_run_dir is not None:
            return self._staging_run_dir
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = self._get_output_dir(trial)
        name = f"{CHECKPOINT_PREFIX}-{self.state.global_step}"
        staging = staging_folder(run_dir, self.state.global_step)
        staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            if checkpoint_state(staged) is None:
                raise RuntimeError(
                    f"the Trainer's checkpoint save wrote no {TRAINER_STATE} to {staged}; grpo_lambda's checkpoints "
                    "expect transformers' Trainer to save into <_get_output_dir()>/checkpoint-<step>."
                )
            if os.path.isdir(final):  # the same step saved again (a run resumed from an earlier checkpoint)
                shutil.rmtree(final)
            os.replace(staged, final)
            os.rmdir(staging)
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = final
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()
