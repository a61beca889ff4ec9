"""The paper's recipe grid: `recipes/paper_grid.yaml` expanded into one explicit YAML per run.

Every generated file holds every value of its run, each value taken from the paper naming its source (Table 2,
§4, §4.1) or marked "our choice" where the paper gives none (docs/recipes.md says why). File names carry the
method's tag (grpo_lambda.methods.Method: `grpo`, `eps_trace-both-0.99`, `eps_weight-recent-0.98`):

    recipes/<model tail>/grpo/config_<dataset>_<method tag>.yaml
    recipes/<model tail>/sft/config_<sft dataset>.yaml
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from grpo_lambda.layout import model_tail
from grpo_lambda.methods import Method, RunFolder, SFTFolder, dataset_tail

MAX_PROMPT_LENGTH = 256  # Table 2
GENERATED = "generated from recipes/paper_grid.yaml by scripts/generate_recipes.py: edit the grid, not this file"


@dataclass(frozen=True)
class Run:
    """One GRPO / GRPO-λ training run of the grid."""

    model_id: str
    size: str
    template: str
    dataset: str
    method: Method

    @property
    def tag(self) -> str:
        return self.method.tag

    @property
    def name(self) -> str:
        """The run folder `<model tail>/grpo/<dataset>_<tag>` (grpo_lambda.methods.RunFolder)."""
        return RunFolder(self.model_id, self.dataset, self.method).name

    @property
    def path(self) -> Path:
        file = f"config_{dataset_tail(self.dataset)}_{self.tag}.yaml"  # the launcher reads it back
        return Path("recipes") / model_tail(self.model_id) / "grpo" / file

    @property
    def make_command(self) -> str:
        return f"make train MODEL={self.model_id} DATASET={self.dataset} " + make_method_arguments(self.method)


def make_method_arguments(method: Method) -> str:
    """The `make train` variables that select `method`: its config fields in upper case."""
    if method.loss_variant == "grpo":
        return "LOSS_VARIANT=grpo"
    return f"LOSS_VARIANT={method.loss_variant} TRACE_STYLE={method.trace_style} TRACE_LAMBDA={method.trace_lambda:g}"


TABLE2_DEVICES = 4  # Table 2: the paper trained every model on 4 devices


def load_grid(root: Path) -> dict:
    return yaml.safe_load((root / "recipes" / "paper_grid.yaml").read_text())


def expand_grid(grid: dict) -> list[Run]:
    """Every (model, dataset) gets GRPO plus its λ × trace_style × loss_variant GRPO-λ runs."""
    runs = []
    for model_id, spec in grid["models"].items():
        for dataset in grid["datasets"]:
            runs.append(Run(model_id, spec["size"], spec["template"], dataset, Method("grpo")))
            for lam, style, variant in itertools.product(
                spec["trace_lambda"], spec["trace_style"], spec["loss_variant"]
            ):
                runs.append(Run(model_id, spec["size"], spec["template"], dataset, Method(variant, style, lam)))
    return runs


def _lora_lines(lora: bool, source: str) -> list[str]:
    if not lora:
        return [f"use_peft: false                        # {source}: full fine-tuning for 1.5B and 3B"]
    return [
        f"use_peft: true                         # {source}: LoRA for 7B",
        "lora_r: 64                             # our choice (the paper gives no LoRA rank)",
        "lora_alpha: 128                        # our choice: 2 × rank",
        "lora_dropout: 0.05                     # our choice",
        "lora_target_modules: all-linear        # our choice",
    ]


def render_grpo_recipe(run: Run, size: dict) -> str:
    method = run.method
    title = (
        "GRPO"
        if method.loss_variant == "grpo"
        else (f"GRPO-λ ({method.loss_variant}, λ = {method.trace_lambda:g}, {method.trace_style} traces)")
    )
    lines = [
        f"# {model_tail(run.model_id)} on {run.dataset}: {title}.",
        f"# Reproduces the paper's run behind Table 1 and Tables 3–6 ({model_tail(run.model_id)}, trained on",
        f"# {run.dataset}) and its training curves (Figures 3–4, Appendix C).",
        f"# {GENERATED}.",
        f"# Launch:  {run.make_command}",
        "#   (= accelerate launch --config_file recipes/accelerate_configs/zero2.yaml --num_processes <GPUs>",
        f"#        -m grpo_lambda.grpo --config {run.path.as_posix()})",
        "# Start from the SFT checkpoint (§4.2) with MODEL=<its output_dir>; vLLM on its own GPU: VLLM_MODE=server.",
        "",
        "# Model",
        f"model_name_or_path: {run.model_id}",
        "dtype: bfloat16                        # Table 2: bf16",
        "bf16: true                             # Table 2: bf16",
        *_lora_lines(size["lora"], "Table 2"),
        "gradient_checkpointing: true           # our choice: fits the batch of Table 2 on 80 GB GPUs",
        "",
        "# Data and rewards",
        f"dataset_name: {run.dataset}                 # §4 training sets",
        f"prompt_template: {run.template}              # understand-r1-zero protocol (qwen_math: Qwen instruct, r1: distilled)",
        "reward_funcs: [accuracy, format]",
        "reward_weights: [1.0, 0.0]             # Table 2: accuracy 1.0, format 0.0",
        "",
    ]
    if method.loss_variant == "grpo":
        lines += ["# Method", "loss_variant: grpo                     # the paper's baseline: TRL's GRPO loss", ""]
    else:
        lines += [
            "# GRPO-λ",
            f"loss_variant: {method.loss_variant}  # §3.2 / Alg. {1 if method.loss_variant == 'eps_trace' else 2}",
            f"trace_lambda: {method.trace_lambda:g}                     # §4.1",
            f"trace_style: {method.trace_style}                    # §3.2, Eq. 2",
            "trace_gamma: 1.0                       # §3.2: γ = 1",
            "trace_floor: 0.0                       # our choice (Eq. 17–18 name a floor but give no value)",
            "adv_clamp_min: -0.1                    # Table 2: advantage clamping −0.1",
            "",
        ]
    lines += [
        "# GRPO (TRL defaults that changed since the paper's TRL, 0.16–0.17, are all set here: docs/recipes.md)",
        "loss_type: bnpo                        # paper's TRL: token mean over each micro-batch (TRL 1.16: dapo)",
        "scale_rewards: group                   # §2: A_NAE normalises by the group's std",
        "beta: 0.04                             # Table 2: KL coefficient",
        "use_bias_correction_kl: false          # paper's TRL: plain k3 KL, Alg. 1–2 (TRL 1.16: × πθ/πold)",
        "num_generations: 8                     # Table 2: group size",
        f"max_prompt_length: {MAX_PROMPT_LENGTH}                 # Table 2 (left truncation, as the paper's TRL did)",
        f"max_completion_length: {size['max_completion_length']}             # Table 2",
        f"per_device_train_batch_size: {size['per_device_train_batch_size']}         # Table 2 (per device, 4 devices)",
        f"gradient_accumulation_steps: {size['gradient_accumulation_steps']}         # Table 2",
        f"global_batch_size: {TABLE2_DEVICES * size['per_device_train_batch_size'] * size['gradient_accumulation_steps']}"
        "  # Table 2: completions per step on its 4 devices; kept on other process counts",
        f"max_steps: {size['max_steps']}                       # Table 2 / §4",
        "max_grad_norm: 1.0                     # Table 2",
        "learning_rate: 1.0e-6                  # our choice (the paper gives no RL learning rate)",
        "lr_scheduler_type: constant_with_warmup  # our choice",
        "warmup_steps: 0.01                     # our choice: 1% of the steps",
        "temperature: 0.9                       # paper's TRL default (the paper gives none; TRL 1.16: 1.0)",
        "top_k: 50                              # paper's TRL default (the paper gives none; TRL 1.16: 0, off)",
        "num_iterations: 1                      # paper's TRL default: on-policy, one update per generation",
        "steps_per_generation: 1                # paper's TRL: one generation per micro-batch (TRL 1.16: per step)",
        "",
        "# Generation (vLLM)",
        "use_vllm: true",
        "vllm_importance_sampling_correction: false  # paper's TRL had none (TRL 1.16: on, sequence_mask)",
        "vllm_mode: colocate                    # our choice: single node; VLLM_MODE=server for trl vllm-serve",
        "vllm_gpu_memory_utilization: 0.3       # our choice: leaves room for the trainer on the same GPU",
        f"vllm_max_model_length: {MAX_PROMPT_LENGTH + size['max_completion_length']}"
        "  # prompt + completion: vLLM's KV cache for a rollout, not the model's whole context",
        "",
        "# Logging and checkpoints",
        "logging_steps: 10",
        "save_strategy: steps",
        "save_steps: 500",
        "save_minutes: 30                       # our choice: a kill loses at most 30 min (docs/performance.md)",
        "save_total_limit: 3",
        "report_to: [wandb]",
        "seed: 42",
        f"output_dir: data/{run.name}",
    ]
    return _align_comments(lines)


def _align_comments(lines: list[str], column: int = 40) -> str:
    """Line up the trailing `# source` comments of YAML value lines."""
    out = []
    for line in lines:
        value, sep, comment = line.partition(" # ")
        if sep and not line.startswith("#"):
            line = f"{value.rstrip():<{column - 1}} # {comment.strip()}"
        out.append(line)
    return "\n".join(out) + "\n"


def sft_path(model_id: str, dataset: str) -> Path:
    return Path("recipes") / model_tail(model_id) / "sft" / f"config_{dataset_tail(dataset)}.yaml"


def render_sft_recipe(model_id: str, spec: dict, size: dict, dataset: str) -> str:
    path = sft_path(model_id, dataset).as_posix()
    lines = [
        f'# {model_tail(model_id)}: format SFT before RL (§4.2, "Mitigate reward hacking") on {dataset}\'s worked',
        f"# solutions rendered in the {spec['template']} template, so the model ends with a parseable answer.",
        f"# {GENERATED}.",
        f"# Launch:  make sft MODEL={model_id} DATASET={dataset}",
        "#   (= accelerate launch --config_file recipes/accelerate_configs/zero2.yaml --num_processes <GPUs>",
        f"#        -m grpo_lambda.sft --config {path})",
        "",
        f"model_name_or_path: {model_id}",
        "dtype: bfloat16                        # Table 2: bf16",
        "bf16: true                             # Table 2: bf16",
        *_lora_lines(size["lora"], "Table 2"),
        "gradient_checkpointing: true           # our choice",
        "",
        f"dataset_name: {dataset}                 # our choice: worked solutions (the paper does not name its SFT data)",
        f"prompt_template: {spec['template']}              # the template the RL stage and the evaluation use",
        "",
        "num_train_epochs: 1                    # Table 2",
        "max_length: 4096                       # Table 2: max sequence length",
        "learning_rate: 2.0e-5                  # Table 2",
        "per_device_train_batch_size: 2         # Table 2",
        "gradient_accumulation_steps: 8         # Table 2",
        "lr_scheduler_type: cosine              # our choice",
        "warmup_steps: 0.03                     # our choice: 3% of the steps",
        "",
        "logging_steps: 10",
        "save_strategy: steps",
        "save_steps: 200",
        "save_minutes: 30                       # our choice: a kill loses at most 30 min (docs/performance.md)",
        "save_total_limit: 2",
        "report_to: [wandb]",
        "seed: 42",
        f"output_dir: data/{SFTFolder(model_id, dataset).name}",
    ]
    return _align_comments(lines)


def generate(root: Path) -> dict[Path, str]:
    """Every generated recipe: relative path → text."""
    grid = load_grid(root)
    files = {run.path: render_grpo_recipe(run, grid["sizes"][run.size]) for run in expand_grid(grid)}
    for model_id, spec in grid["models"].items():
        files[sft_path(model_id, grid["sft_dataset"])] = render_sft_recipe(
            model_id, spec, grid["sizes"][spec["size"]], grid["sft_dataset"]
        )
    return files
