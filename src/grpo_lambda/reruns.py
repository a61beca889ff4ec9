"""What rerunning a training command does in an output folder that already holds a run.

1. A folder holds one run, defined by its settings. `make train` / `make sft` record the resolved settings once per
   launch in <output_dir>/recipe.yaml (layout.SETTINGS_RECORD, written whole); a rerun compares its own with them
   field by field, and any difference outside RERUN_MAY_CHANGE (how long it trains, how it saves, logs and reports,
   how its batch is split over processes, how vLLM is run) is refused in one line naming the fields. A folder
   without a settings record (a run launched with `accelerate launch` directly) is compared by its run record's
   stage and method.
2. Every GRPO and SFT output folder has one run record, layout.RUN_RECORD: stage, model, training set, method tag,
   template, and `finished_step` once the final model is saved (written last). A run finished at `max_steps` or
   beyond is done: it says so and trains nothing (extending it is a higher `max_steps`).
3. Anything else resumes from its newest complete checkpoint (checkpoints.checkpoint_to_resume).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import GRPOLambdaError
from .layout import RUN_RECORD, SETTINGS_RECORD, run_record
from .records import replace_file

# Fields a rerun may change without making it another run: its length, checkpoints, logging and reporting, where it
# runs and how its batch is split over processes (with global_batch_size set, the trainer keeps the batch itself), and
# how vLLM is started.
RERUN_MAY_CHANGE = frozenset(
    {
        "max_steps",
        "output_dir",
        "resume_from_checkpoint",
        "local_rank",
        "use_cpu",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_on_each_node",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "log_level",
        "log_level_replica",
        "log_on_each_node",
        "log_completions",
        "num_completions_to_print",
        "report_to",
        "run_name",
        "project",
        "disable_tqdm",
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
        "hub_private_repo",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "ddp_timeout",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "use_vllm",
        "vllm_mode",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_base_url",
        "vllm_server_timeout",
        "vllm_group_port",
        "vllm_gpu_memory_utilization",
        "vllm_tensor_parallel_size",
        "vllm_enable_sleep_mode",
        "grading_timeout_s",
    }
)
BATCH_SPLIT = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation")


def settings_differences(recorded: tuple, parsed: tuple, stage: str) -> dict[str, tuple]:
    """The fields (name → (recorded value, this command's)) in which two parses (script, training, model) of one
    stage define different runs."""
    free = RERUN_MAY_CHANGE
    if stage == "grpo" and parsed[1].global_batch_size is not None:
        free = free | set(BATCH_SPLIT)
    differences = {}
    for before, now in zip(recorded, parsed, strict=True):
        for field in dataclasses.fields(now):
            old, new = getattr(before, field.name), getattr(now, field.name)
            if field.name not in free and old != new:
                differences[field.name] = (old, new)
    return differences


def _shown(value) -> str:
    return str(getattr(value, "value", value))


def check_settings(stage: str, parsed: tuple) -> tuple | None:
    """Refuses settings (script, training, model) that define another run than the one their output folder records
    (point 1); returns the recorded ones (None when there are none)."""
    from .configs import read_recipe, resolve_settings

    output_dir = Path(parsed[1].output_dir)
    record, path = run_record(output_dir), output_dir / SETTINGS_RECORD
    if record is not None and record.get("stage", "grpo") != stage:
        raise GRPOLambdaError(
            f"{output_dir} holds a {record.get('stage', 'grpo')} run, and this command runs {stage}: give it its own "
            "output folder (--output_dir)."
        )
    if not path.is_file():
        return None
    recorded = resolve_settings(stage, read_recipe(path), for_reading=True).parsed
    differences = settings_differences(recorded, parsed, stage)
    if differences:
        shown = "; ".join(f"{k}: {_shown(a)} → {_shown(b)}" for k, (a, b) in list(differences.items())[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise GRPOLambdaError(
            f"{output_dir} holds another run ({shown}{more}; recorded in {path}): give this one its own output folder "
            "(--output_dir), or rerun with the recorded settings to resume that one."
        )
    return recorded


def record_settings(settings, write: bool = True) -> list[str]:
    """A launch's resolved settings (configs.Settings) checked against those its output folder records
    (`check_settings`) and, when `write`, recorded there for its ranks. Returns the free fields it changes, as
    `name: recorded → now`."""
    recorded = check_settings(settings.stage, settings.parsed)
    changed = []
    if recorded is not None:
        for old, new in zip(recorded, settings.parsed, strict=True):
            for name in (f.name for f in dataclasses.fields(new)):
                if name in settings.values and name != "output_dir" and getattr(old, name) != getattr(new, name):
                    changed.append(f"{name}: {_shown(getattr(old, name))} → {_shown(getattr(new, name))}")
    if write:
        output_dir = Path(settings.training.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        header = f"# The resolved settings of the {settings.stage} run in this folder, recorded by make {'train' if settings.stage == 'grpo' else 'sft'}.\n"
        replace_file(output_dir / SETTINGS_RECORD, header + settings.text())
    return changed


def claim_output_dir(output_dir: str, record: dict, write: bool) -> None:
    """Checks `record` (its `stage`, `method` tag, model, dataset, template) against the run record `output_dir`
    keeps, and writes it there when there is none and `write` (the main process). Raises when the folder holds
    another stage or trains another method."""
    kept = run_record(output_dir)
    if kept is not None:
        for key in ("stage", "method"):
            if kept.get(key, "grpo" if key == "stage" else None) != record.get(key):
                raise GRPOLambdaError(
                    f"{output_dir} holds a {kept.get('method') or kept.get('stage')} run; this command trains "
                    f"{record.get('method') or record['stage']}. Give it its own output folder (--output_dir), or "
                    "train the folder's own settings to resume it."
                )
        return
    if write:
        path = Path(output_dir) / RUN_RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, json.dumps(record, indent=2) + "\n")


def finished_step(output_dir: str, max_steps: int) -> int | None:
    """The step the run in `output_dir` finished at (its final model saved: `mark_finished`) if that is `max_steps`
    or more, else None. A run killed after its last checkpoint but before its final model was fully written is not
    finished: it resumes from that checkpoint, trains no step and saves the final model again."""
    step = final_step(output_dir)
    return step if step is not None and max_steps > 0 and step >= max_steps else None


def final_step(output_dir: str | Path) -> int | None:
    """The step whose final model the run in `output_dir` saved (`mark_finished`), or None."""
    return (run_record(output_dir) or {}).get("finished_step")


def mark_finished(output_dir: str, step: int, **details) -> None:
    """Records that the final model of `step` is saved (with any `details`, e.g. the wall time): called after the
    model is written, so a kill before leaves the run unfinished."""
    record = run_record(output_dir) or {}
    replace_file(
        Path(output_dir) / RUN_RECORD, json.dumps({**record, **details, "finished_step": step}, indent=2) + "\n"
    )
