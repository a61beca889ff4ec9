"""Rerunning a training command in a folder that holds a run: other settings are refused, field by field; a finished
run is done."""

import json

import pytest

from conftest import REPO_ROOT
from grpo_lambda.configs import read_recipe, resolve_settings
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.layout import RUN_RECORD, SETTINGS_RECORD
from grpo_lambda.reruns import claim_output_dir, finished_step, mark_finished, record_settings

TRACE = {"stage": "grpo", "method": "eps_trace-both-0.99", "model": "m", "dataset": "arithmetic"}
DEFAULT = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"


def settings(output_dir, **changes):
    return resolve_settings(
        "grpo", {**read_recipe(DEFAULT), "output_dir": str(output_dir), "use_cpu": True, **changes}
    )


def test_a_rerun_with_other_settings_is_refused_field_by_field(tmp_path):
    """Issue 34: another DATASET into a finished folder said "already reached max_steps"; another MODEL and DATASET
    into an unfinished one resumed the other model's checkpoint. The recorded settings are now compared whole."""
    run = tmp_path / "run"
    assert record_settings(settings(run, global_batch_size=8)) == []
    assert (run / SETTINGS_RECORD).is_file()
    for changes, named in (
        ({"dataset_name": "gsm8k"}, "dataset_name: arithmetic → gsm8k"),
        ({"model_name_or_path": "embedded:tiny-qwen2"}, "model_name_or_path"),
        ({"learning_rate": 2e-6}, "learning_rate: 1e-06 → 2e-06"),
        ({"trace_lambda": 0.5}, "trace_lambda: 0.99 → 0.5"),
        ({"prompt_template": "qwen_math"}, "prompt_template: no → qwen_math"),
        ({"global_batch_size": None, "per_device_train_batch_size": 4}, "global_batch_size: 8 → None"),
    ):
        with pytest.raises(GRPOLambdaError, match=f"{run} holds another run .*{named}") as raised:
            record_settings(settings(run, **{"global_batch_size": 8, **changes}))
        assert "\n" not in str(raised.value) and "--output_dir" in str(raised.value)
    # what a rerun may change: its length, checkpoints, logging, and the batch split that keeps global_batch_size
    changed = record_settings(
        settings(
            run,
            global_batch_size=8,
            max_steps=8,
            save_steps=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            report_to="wandb",
        )
    )
    assert "max_steps: 4 → 8" in changed and "per_device_train_batch_size: 8 → 4" in changed
    assert read_recipe(run / SETTINGS_RECORD)["max_steps"] == 8  # recorded anew
    # with no global_batch_size to keep, the per-device batch is the batch: another one is another run
    record_settings(settings(tmp_path / "plain"))
    with pytest.raises(GRPOLambdaError, match="per_device_train_batch_size: 8 → 4"):
        record_settings(settings(tmp_path / "plain", per_device_train_batch_size=4))


def test_an_sft_folder_refuses_a_grpo_run(tmp_path):
    claim_output_dir(str(tmp_path), {"stage": "sft", "model": "m"}, write=True)
    with pytest.raises(GRPOLambdaError, match="holds a sft run, and this command runs grpo"):
        record_settings(settings(tmp_path))


def test_a_folder_keeps_its_method_and_refuses_another(tmp_path):
    claim_output_dir(str(tmp_path / "run"), TRACE, write=False)  # another rank: reads, never writes
    assert not (tmp_path / "run" / RUN_RECORD).exists()
    claim_output_dir(str(tmp_path / "run"), TRACE, write=True)
    assert json.loads((tmp_path / "run" / RUN_RECORD).read_text()) == TRACE
    claim_output_dir(str(tmp_path / "run"), TRACE, write=True)  # the same command again: resumes
    with pytest.raises(GRPOLambdaError, match=r"holds a eps_trace-both-0.99 run; this command trains grpo") as raised:
        claim_output_dir(str(tmp_path / "run"), {**TRACE, "method": "grpo"}, write=True)
    assert "\n" not in str(raised.value) and "--output_dir" in str(raised.value)


def test_a_run_is_done_once_its_final_model_is_saved_at_max_steps(tmp_path):
    run = str(tmp_path / "run")
    claim_output_dir(run, TRACE, write=True)
    assert finished_step(run, max_steps=4) is None  # a checkpoint at max_steps is not enough: the model comes last
    mark_finished(run, 4)
    assert json.loads((tmp_path / "run" / RUN_RECORD).read_text()) == {**TRACE, "finished_step": 4}
    assert finished_step(run, max_steps=4) == 4
    assert finished_step(run, max_steps=6) is None  # an explicit increase extends it
    assert finished_step(run, max_steps=-1) is None  # epochs, not steps: the Trainer decides
    assert finished_step(str(tmp_path / "other"), max_steps=4) is None


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

    output_dir.mkdir()
    (output_dir / RUN_RECORD).write_text(
        json.dumps({"stage": "grpo", "method": "eps_trace-both-0.99", "finished_step": 2})
    )
    assert grpo.main(*arguments()) == 0
    assert sorted(p.name for p in output_dir.iterdir()) == [RUN_RECORD]  # nothing trained or saved
    with pytest.raises(GRPOLambdaError, match="holds a eps_trace-both-0.99 run; this command trains eps_weight"):
        grpo.main(*arguments("--loss_variant", "eps_weight"))


@pytest.mark.slow
def test_a_kill_while_the_final_model_is_written_is_repaired_by_the_rerun(tiny_model_dir, tmp_path):
    """The run's last checkpoint is complete, its final model.safetensors torn (a kill or a full disk during the final
    save). Before, the rerun saw the checkpoint at max_steps, said "done" and kept the torn model; now the run is
    finished only once its model is saved, so the rerun resumes at max_steps, trains nothing and saves it again."""
    from safetensors.torch import load_file

    from grpo_lambda import metrics_log
    from grpo_lambda.testbench.train import main

    recipe = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
    output_dir = tmp_path / "run"
    argv = ["grpo", "--config", str(recipe), "--model_name_or_path", str(tiny_model_dir)]
    argv += ["--output_dir", str(output_dir), "--max_steps", "2", "--save_steps", "1", "--use_cpu", "true"]
    argv += ["--num_generations", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8"]
    argv += ["--report_to", "none", "--reward_funcs", "format", "--reward_weights", "1.0"]
    assert main(argv) == 0
    weights = output_dir / "model.safetensors"
    whole = {name: tensor.clone() for name, tensor in load_file(weights).items()}  # not a view of the file
    record = json.loads((output_dir / RUN_RECORD).read_text())
    assert record["finished_step"] == 2
    (output_dir / RUN_RECORD).write_text(json.dumps({k: v for k, v in record.items() if k != "finished_step"}))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # the kill, mid-write

    assert main(argv) == 0
    repaired = load_file(weights)
    assert repaired.keys() == whole.keys() and all(repaired[k].equal(whole[k]) for k in whole)
    assert json.loads((output_dir / RUN_RECORD).read_text())["finished_step"] == 2
    assert [r["step"] for r in metrics_log.read(output_dir / "metrics.jsonl") if "loss" in r] == [1, 2]


def test_a_lora_runs_final_model_from_its_checkpoint_is_the_merged_adapter(tiny_model_dir, tmp_path):
    """The LoRA branch of that repair (the 7B recipes): the checkpoint holds the adapter; the final model is the base
    with it merged, as save_final_model writes it, and the adapter is kept in <output_dir>/adapter."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo_lambda.models import final_model_from_checkpoint

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, init_lora_weights=False)
    )
    checkpoint = tmp_path / "run" / "checkpoint-2"
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"trainer state, not the model")
    args = SimpleNamespace(use_peft=True, model_name_or_path=str(tiny_model_dir), dtype="float32", model_revision=None)
    final_model_from_checkpoint(str(checkpoint), args, str(tmp_path / "run"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    expected = model.merge_and_unload()
    assert all(torch.allclose(p, expected.state_dict()[n]) for n, p in merged.state_dict().items())
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "run" / "optimizer.pt").exists() and (tmp_path / "run" / "tokenizer.json").is_file()
