"""The paper's TRL, pinned: every GRPOConfig default of TRL 1.16 that differs from what the paper's TRL did is set
explicitly in every paper recipe, to the paper's TRL's value where the paper itself gives none.

The paper's TRL (docs/recipes.md, "The paper's TRL"): its code is open-r1's (Appendix B), which pinned trl 0.16.0 from
2025-03-24 and TRL's main branch (0.17.0 on 2025-04-24) until it moved to 0.18.0 on 2025-05-28; the paper's
Alg. 1–2 clip the ratio symmetrically as TRL ≥ 0.16 does, and its latest arXiv reference is from March 2025. So: 0.16–0.17.
The values below are read from trl/trainer/grpo_config.py and grpo_trainer.py at the tags v0.16.0 and v0.17.0 of
TRL's git history; a field TRL added later carries the value that does what 0.16–0.17 did without it.
"""

import dataclasses

import pytest
import yaml
from trl import GRPOConfig

from conftest import REPO_ROOT
from grpo_lambda.jobs.recipes import expand_grid, load_grid

RUNS = expand_grid(load_grid(REPO_ROOT))

# What the paper's TRL (0.16–0.17) did, for every own field of TRL 1.16's GRPOConfig that bears on training.
PAPER_TRL = {
    # GRPOConfig fields of 0.16 / 0.17, with their defaults there
    "learning_rate": 1e-6,
    "model_init_kwargs": None,
    "disable_dropout": False,  # 0.17; 0.16 kept dropout
    "remove_unused_columns": False,
    "num_generations": 8,
    "max_completion_length": 256,
    "ds3_gather_for_generation": True,
    "shuffle_dataset": True,  # 0.17; 0.16 always shuffled
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "min_p": None,
    "repetition_penalty": 1.0,
    "cache_implementation": None,
    "use_vllm": False,
    "beta": 0.04,
    "num_iterations": 1,
    "epsilon": 0.2,
    "epsilon_high": None,
    "reward_weights": None,
    "scale_rewards": "group",  # 0.16–0.17: True, divide by the group's std
    "loss_type": "bnpo",  # 0.17's default; 0.16 hard-coded Σ loss·mask / Σ mask over the micro-batch
    "mask_truncated_completions": False,
    "sync_ref_model": False,
    "ref_model_mixup_alpha": 0.6,
    "ref_model_sync_steps": 512,
    "log_completions": False,
    "num_completions_to_print": None,
    # added after 0.17: the value that does what 0.16–0.17 did
    "steps_per_generation": 1,  # ≤ 0.17 generated the completions of each micro-batch separately
    "generation_batch_size": None,  # follows steps_per_generation
    "generation_kwargs": None,
    "chat_template_kwargs": None,
    "vllm_structured_outputs_regex": None,  # 0.16–0.17: vllm_guided_decoding_regex None
    "vllm_tensor_parallel_size": 1,
    "cast_lm_head_to_fp32": False,
    "delta": None,
    "importance_sampling_level": "token",
    "multi_objective_aggregation": "sum_then_normalize",
    "top_entropy_quantile": 1.0,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
    "vllm_importance_sampling_correction": False,
    "off_policy_mask_threshold": None,
    "use_bias_correction_kl": False,
}
# Own fields of TRL 1.16's GRPOConfig that change nothing the paper's runs train, and why.
NO_EFFECT = {
    "trust_remote_code": "loading only",
    "router_aux_loss_coef": "mixture-of-experts models only; the paper's are dense",
    "num_generations_eval": "evaluation during training, which the recipes do not run",
    "pad_to_multiple_of": "padding only (masked)",
    "vllm_mode": "where vLLM runs",
    "vllm_model_impl": "vLLM's own model code, the same weights",
    "vllm_enable_sleep_mode": "vLLM memory management",
    "vllm_server_base_url": "where the vLLM server is",
    "vllm_server_host": "where the vLLM server is",
    "vllm_server_port": "where the vLLM server is",
    "vllm_server_timeout": "how long to wait for the vLLM server",
    "vllm_group_port": "weight-sync port",
    "vllm_gpu_memory_utilization": "vLLM's memory share",
    "vllm_max_model_length": "vLLM's KV-cache size",
    "sapo_temperature_neg": "loss_type sapo only",
    "sapo_temperature_pos": "loss_type sapo only",
    "vespo_k_pos": "loss_type vespo only",
    "vespo_lambda_pos": "loss_type vespo only",
    "vespo_k_neg": "loss_type vespo only",
    "vespo_lambda_neg": "loss_type vespo only",
    "entropy_coef_min": "use_adaptive_entropy only",
    "entropy_coef_max": "use_adaptive_entropy only",
    "entropy_coef_delta": "use_adaptive_entropy only",
    "entropy_target": "use_adaptive_entropy only",
    "max_tool_calling_iterations": "tools only",
    "vllm_importance_sampling_mode": "vllm_importance_sampling_correction only",
    "vllm_importance_sampling_clip_max": "vllm_importance_sampling_correction only",
    "vllm_importance_sampling_clip_min": "vllm_importance_sampling_correction only",
    "vllm_importance_sampling_cap": "deprecated alias of vllm_importance_sampling_clip_max",
    "log_multimodal": "logging",
    "log_unique_prompts": "logging",
    "log_completions_hub_repo": "logging",
    "use_transformers_continuous_batching": "generation engine, the same sampling",
    "transformers_continuous_batching_config": "generation engine, the same sampling",
    "use_transformers_paged": "deprecated alias of use_transformers_continuous_batching",
}
# Fields whose value in a recipe is the paper's own (Table 2), not its TRL's default.
FROM_THE_PAPER = {"max_completion_length"}


def changed_defaults() -> dict[str, object]:
    """The own fields of the installed GRPOConfig whose default differs from what the paper's TRL did (field: the
    paper's TRL's value). Raises for a field that is neither in PAPER_TRL nor NO_EFFECT: a TRL upgrade must be read."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    unread = [name for name in GRPOConfig.__annotations__ if name not in PAPER_TRL and name not in NO_EFFECT]
    assert not unread, f"TRL's GRPOConfig has fields nobody compared with the paper's TRL: {unread}"
    return {name: value for name, value in PAPER_TRL.items() if defaults[name] != value}


def unset_changed_defaults(recipe_text: str) -> list[str]:
    """The changed defaults (`changed_defaults`) that a recipe leaves to TRL 1.16."""
    keys = yaml.safe_load(recipe_text)
    return [name for name in changed_defaults() if name not in keys]


def test_the_changed_defaults_are_the_known_ones():
    """The list the recipes answer (docs/recipes.md's table), as TRL 1.16 and the paper's TRL give it."""
    assert set(changed_defaults()) == {
        "max_completion_length",
        "temperature",
        "top_k",
        "beta",
        "loss_type",
        "steps_per_generation",
        "vllm_importance_sampling_correction",
        "use_bias_correction_kl",
    }


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.path.as_posix().removeprefix("recipes/"))
def test_every_paper_recipe_sets_every_changed_trl_default(run):
    """(test_configs.py parses every recipe with the trainer's parser; the values here are the YAML's.)"""
    text = (REPO_ROOT / run.path).read_text()
    assert unset_changed_defaults(text) == []
    recipe = yaml.safe_load(text)
    for name, value in changed_defaults().items():
        if name not in FROM_THE_PAPER:
            assert recipe[name] == value, name


def test_a_recipe_that_leaves_a_changed_default_unset_is_caught():
    text = (REPO_ROOT / RUNS[0].path).read_text()
    without = "\n".join(
        line for line in text.splitlines() if not line.startswith("vllm_importance_sampling_correction")
    )
    assert unset_changed_defaults(without) == ["vllm_importance_sampling_correction"]
