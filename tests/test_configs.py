"""Recipes parse with the real parser; bad settings stop at start-up with one clear line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trl import SFTConfig

from conftest import REPO_ROOT
from grpo_lambda.configs import CONFIG_ERROR, GRPOLambdaConfig, parse_grpo_args, parse_sft_args
from grpo_lambda.errors import GRPOLambdaError

RECIPE_YAMLS = sorted((REPO_ROOT / "recipes").rglob("*.yaml"))
TRAINING_RECIPES = [p for p in RECIPE_YAMLS if p.parent.name in ("grpo", "sft")]
ACCELERATE_CONFIGS = REPO_ROOT / "recipes" / "accelerate_configs"


def test_every_recipe_file_is_found_and_checked():
    """The recursive listing finds every generated recipe and the defaults, and nothing under recipes/ escapes
    the tests: each YAML is a training recipe, an accelerate config, a sweep, a style (test_styles.py) or the grid."""
    from grpo_lambda.jobs.recipes import generate

    others = [p.relative_to(REPO_ROOT).as_posix() for p in RECIPE_YAMLS if p not in TRAINING_RECIPES]
    assert all(
        p.startswith(("recipes/accelerate_configs/", "recipes/sweeps/", "recipes/styles/"))
        for p in others
        if p != "recipes/paper_grid.yaml"
    )
    defaults = set((REPO_ROOT / "recipes" / "default").rglob("*.yaml"))
    assert set(TRAINING_RECIPES) == {REPO_ROOT / p for p in generate(REPO_ROOT)} | defaults
    assert len(defaults) == 3 and all(p.name.startswith("config_") for p in TRAINING_RECIPES)


def parse_recipe(recipe: Path):
    """The real parser and dataclasses; `--use_cpu` because GPU recipes ask for bf16, which needs it on a CPU."""
    parse = parse_sft_args if "sft" in recipe.parts else parse_grpo_args
    return parse(["--config", str(recipe), "--use_cpu", "true"])


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_recipe_parses(recipe):
    text = recipe.read_text()
    assert text.startswith("#") and "Launch:" in text, "a recipe opens with what it is and how to launch it"
    script_args, training_args, model_args = parse_recipe(recipe)
    assert model_args.model_name_or_path and script_args.dataset_name
    assert isinstance(training_args, SFTConfig if "sft" in recipe.parts else GRPOLambdaConfig)
    if "grpo" in recipe.parts:  # a first 7B server start (download, load, compile, CUDA graphs) outlasts TRL's 240 s
        assert training_args.vllm_server_timeout >= 1800


@pytest.mark.parametrize(
    ("name", "distributed_type", "zero_stage"),
    [("cpu", "NO", None), ("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)],
)
def test_accelerate_configs_load_with_accelerates_own_loader(name, distributed_type, zero_stage):
    """accelerate's loader rejects unknown keys and bad enum values, as `accelerate launch` would."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig) and config.distributed_type.value == distributed_type
    assert (config.deepspeed_config or {}).get("zero_stage") == zero_stage
    if zero_stage == 3:  # the trainer's save gathers the shards into one file (LoRA adapters and full weights)
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def test_every_launcher_choice_has_an_accelerate_config():
    from grpo_lambda.jobs.launch import ACCELERATE_CONFIGS as CHOICES

    assert {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")} == set(CHOICES) - {"auto"}


BAD_SETTINGS = [
    ({"trace_lambda": 1.5}, "trace_lambda"),
    ({"trace_lambda": -0.5}, "trace_lambda"),
    ({"trace_gamma": 0.0}, "trace_gamma"),
    ({"trace_floor": 3.0}, "trace_floor"),
    ({"trace_style": "forward"}, "trace_style"),
    ({"loss_variant": "eps_magic"}, "loss_variant"),
    ({"weight_clamp_fn": "relu"}, "weight_clamp_fn"),
    ({"adv_clamp_min": 0.5}, "adv_clamp_min"),
    ({"trace_lambdaa": 0.9}, "trace_lambdaa"),  # a typo: unknown key
    ({"use_liger_kernel": True}, "use_liger_kernel"),
    ({"loss_type": "cispo"}, "loss_type"),
    ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
    ({"use_bias_correction_kl": True}, "use_bias_correction_kl"),
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
    ({"advantage_bias_correction": "eos"}, "advantage_bias_correction"),
    ({"loss_variant": "grpo", "advantage_bias_correction": "eos_bound", "use_liger_kernel": True}, "use_liger_kernel"),
    ({"loss_variant": "grpo", "lemma1_diagnostics": True, "use_liger_kernel": True}, "lemma1_diagnostics=false"),
    ({"loss_variant": "grpo", "adv_clamp_min": -0.1, "use_liger_kernel": True}, "adv_clamp_min=null"),
    ({"max_prompt_length": 0}, "max_prompt_length"),
]


def write_recipe(tmp_path: Path, base: str = "eps_trace-both-0.99", **settings) -> Path:
    recipe = yaml.safe_load((REPO_ROOT / f"recipes/default/grpo/config_arithmetic_{base}.yaml").read_text())
    recipe.update(settings, output_dir=str(tmp_path / "out"))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("settings,name", BAD_SETTINGS)
def test_bad_yaml_fails_with_one_line(tmp_path, settings, name):
    with pytest.raises(GRPOLambdaError) as raised:
        parse_grpo_args(["--config", str(write_recipe(tmp_path, **settings))])
    message = str(raised.value)
    assert message.startswith(CONFIG_ERROR) and name in message and "\n" not in message


def test_bad_command_line_value_fails_with_one_line(tmp_path):
    recipe = write_recipe(tmp_path)
    for argv in (["--trace_style", "sideways"], ["--no_such_flag", "1"], ["--trace_lambda", "2"]):
        with pytest.raises(GRPOLambdaError) as raised:
            parse_grpo_args(["--config", str(recipe), *argv])
        message = str(raised.value)
        assert message.startswith(CONFIG_ERROR) and "\n" not in message


def test_plain_grpo_accepts_what_grpo_lambda_rejects(tmp_path):
    recipe = write_recipe(tmp_path, "grpo", loss_type="cispo", use_bias_correction_kl=True)
    _, training_args, _ = parse_grpo_args(["--config", str(recipe)])
    assert training_args.loss_type == "cispo"


def test_entry_point_prints_no_traceback_before_importing_trls_trainer(tmp_path):
    """A config typo stops `python -m grpo_lambda.grpo` with one line, before TRL's trainer (and vLLM, ~20 s) loads."""
    recipe = write_recipe(tmp_path, trace_lambda=7)
    entry_point = (
        "import runpy, sys\ntry: runpy.run_module('grpo_lambda.grpo', run_name='__main__')\n"
        "finally: print('imported:', sorted({'vllm', 'trl.trainer.grpo_trainer'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", entry_point, "--config", str(recipe)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"grpo_lambda: {CONFIG_ERROR}")
    assert result.stdout.strip().splitlines()[-1] == "imported: []"
