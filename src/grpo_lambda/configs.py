"""Configuration of the GRPO / GRPO-λ stage: TRL's dataclasses plus the fields of the paper's method."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import trl
import yaml
from trl import GRPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

from .data import ARITHMETIC_LEVELS
from .errors import GRPOLambdaError
from .loss import WEIGHT_CLAMP_FNS, WeightClampFn
from .methods import (
    ADVANTAGE_BIAS_CORRECTIONS,
    CONFIG_DEFAULTS,
    LOSS_VARIANTS,
    AdvantageBiasCorrection,
    LossVariant,
    TraceStyle,
)
from .templates import PromptTemplate, check_template
from .traces import TraceSpec

SUPPORTED_TRL_VERSION = "1.16.0"  # the TRL whose private loss path grpo_lambda.trainer hooks (checked at start-up)
# TRL loss types whose per-token term is the clipped ratio times the advantage; the others (cispo, sapo, vespo,
# luspo) use the log-probabilities or a sequence-level ratio in ways the traces of Eq. 2 are not defined for.
TRACE_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass
class WallTimeCheckpoints:
    """A checkpoint at least every `save_minutes`, in both stages (grpo_lambda.callbacks.PreemptionCallback)."""

    save_minutes: float | None = field(
        default=30.0,
        metadata={
            "help": "Also save a checkpoint once this many minutes have passed since the last one, so that a kill "
            "nothing can answer (SIGKILL, a node failure) loses at most this much training (plus the step under "
            "way); null: only save_steps and stop requests save."
        },
    )

    def __post_init__(self):
        if self.save_minutes is not None and not self.save_minutes > 0:
            raise GRPOLambdaError(f"save_minutes={self.save_minutes} must be positive, or null to save by steps only.")
        super().__post_init__()


@dataclass
class GRPOLambdaConfig(WallTimeCheckpoints, GRPOConfig):
    """TRL's `GRPOConfig` plus the GRPO-λ fields (§3, Alg. 1–2, Table 2)."""

    loss_variant: LossVariant = field(
        default=CONFIG_DEFAULTS["loss_variant"],
        metadata={
            "help": "Policy loss: 'grpo' (TRL's own), 'eps_trace' (GRPO-λ with traced ratios, Alg. 1) or "
            "'eps_weight' (GRPO-λ with trace-weighted per-token losses, Alg. 2)."
        },
    )
    trace_style: TraceStyle = field(
        default=CONFIG_DEFAULTS["trace_style"],
        metadata={"help": "Trace shape tr(t, l) (Eq. 2): 'recent' = (γλ)^l, 'both' = max((γλ)^l, (γλ)^(t−l))."},
    )
    trace_lambda: float = field(
        default=CONFIG_DEFAULTS["trace_lambda"],
        metadata={"help": "λ ∈ [0, 1] of the traces; λ = 0 with 'recent' is GRPO (§4.1 uses 0.99)."},
    )
    trace_gamma: float = field(default=1.0, metadata={"help": "Discount γ ∈ (0, 1] of the traces (decay = γλ)."})
    trace_floor: float = field(
        default=0.0,
        metadata={"help": "Floor ε ∈ [0, 1] of the off-diagonal trace weights (Eq. 17–18); 0 disables it."},
    )
    adv_clamp_min: float | None = field(
        default=CONFIG_DEFAULTS["adv_clamp_min"],
        metadata={"help": "Advantages below this are raised to it (Alg. 1–2; −0.1 in Table 2); null disables it."},
    )
    weight_clamp_fn: WeightClampFn = field(
        default="sigmoid",
        metadata={
            "help": "Soft clamp f of ε-weight (Alg. 2): 'sigmoid' = 1 + σ(log π − 1), 'tanh' = 1 + tanh(log π − 1)."
        },
    )

    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO's dynamic sampling (§3.2 of Yu et al. 2025): drop groups whose rewards are all equal and "
            "generate more prompts until the batch holds its number of groups (docs/method.md)."
        },
    )
    dynamic_sampling_max_rounds: int = field(
        default=10,
        metadata={
            "help": "Generation rounds per step at most, the step's own included; when they keep too few groups, the "
            "earliest zero-variance groups fill the batch, logged as dynamic_sampling/groups_filled and a warning."
        },
    )

    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Completions per optimizer step over every training process (Table 2: 64). `make train` keeps it on "
            "any number of processes by setting per_device_train_batch_size and gradient_accumulation_steps; a run "
            "whose per-device batch × accumulation × processes differs stops. null: no check."
        },
    )
    vllm_server_timeout: float = field(
        default=1800.0,
        metadata={
            "help": "Seconds the trainers wait for the vLLM server (server mode) to answer. TRL's 240 s is too short "
            "for a first start of a 7B model on a cluster: download, weight loading, compilation and CUDA graphs."
        },
    )

    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the last N prompt tokens, as TRL < 0.20 did with this field (the paper's 256, Table 2); "
            "null keeps whole prompts."
        },
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "Multiply the k3 KL term by πθ/πold (TRL's default since DeepSeek-V3.2). Off here: the paper's "
            "objective adds β·k3 unweighted (§2, Alg. 1–2). Not available with eps_trace, whose ratio is the traced one."
        },
    )

    advantage_bias_correction: AdvantageBiasCorrection = field(
        default=CONFIG_DEFAULTS["advantage_bias_correction"],
        metadata={
            "help": "'eos_bound' adds Lemma 1's bound on GRPO's baseline bias, 1 − Π_{k<t}(1 − π(EOS|s_k)), to the "
            "normalised advantage of each token t (the paper's preliminary experiment, Appendix A.2; 'inconclusive' "
            "there) and logs it as lemma1/…. 'none' (default) leaves advantages as they are."
        },
    )
    lemma1_diagnostics: bool = field(
        default=False,
        metadata={
            "help": "Log Lemma 1's bound (lemma1/…, §3.1) at every micro-step, from the loss's own policy forward: a "
            "[B, T, hidden] float32 copy of the final hidden states, one all-reduce, and under ZeRO-3 a gather of the "
            "LM head. On by itself with advantage_bias_correction=eos_bound, which needs the bound."
        },
    )

    def __post_init__(self):
        self._check_grpo_lambda_fields()
        # The TRL version here, in seconds; the trainer's methods (grpo.main, before any model loads) where the trainer
        # is imported anyway: importing it (and vLLM) would double what planning a run costs (a dry run, a sweep).
        if trl.__version__ != SUPPORTED_TRL_VERSION:
            raise ImportError(
                f"grpo_lambda's trainer hooks TRL's private loss path and supports trl=={SUPPORTED_TRL_VERSION} only; "
                f"found trl=={trl.__version__}. Run: pip install trl=={SUPPORTED_TRL_VERSION}"
            )
        super().__post_init__()

    @property
    def trace(self) -> TraceSpec:
        """The trace tr(t, l) of these fields (`trace_gamma`, `trace_lambda`, `trace_style`, `trace_floor`)."""
        return TraceSpec(self.trace_gamma, self.trace_lambda, self.trace_style, self.trace_floor)

    @property
    def lemma1_enabled(self) -> bool:
        """Whether the trainer computes Lemma 1's bound: asked for, or needed by `eos_bound`."""
        return self.lemma1_diagnostics or self.advantage_bias_correction == "eos_bound"

    def _check_liger(self) -> None:
        """Liger's fused loss replaces TRL's `_compute_loss` and its policy forward, where every GRPO-λ piece acts."""
        fixes = {  # field: (the value that needs no TRL loss, whether it is set otherwise)
            "loss_variant": ("grpo", self.loss_variant != "grpo"),
            "adv_clamp_min": ("null", self.adv_clamp_min is not None),
            "lemma1_diagnostics": ("false", self.lemma1_diagnostics),
            "advantage_bias_correction": ("none", self.advantage_bias_correction != "none"),
        }
        needs = {name: fix for name, (fix, is_set) in fixes.items() if is_set}
        if needs:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in needs)
            undo = ", ".join(f"{name}={fix}" for name, fix in needs.items())
            raise ValueError(
                f"{values} need(s) TRL's own loss, which use_liger_kernel=True replaces. "
                f"Set use_liger_kernel=false or {undo}."
            )

    def _check_dynamic_sampling(self) -> None:
        if self.dynamic_sampling_max_rounds < 2:
            raise ValueError(
                f"dynamic_sampling_max_rounds={self.dynamic_sampling_max_rounds} leaves no round to generate more "
                "prompts in; use 2 or more (default 10)."
            )
        if not self.dynamic_sampling:
            return
        if self.scale_rewards == "batch" or self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "dynamic_sampling needs advantages that depend on their own group only, which scale_rewards=batch and "
                "multi_objective_aggregation=normalize_then_sum are not. Set scale_rewards=group (or none) and "
                "multi_objective_aggregation=sum_then_normalize, or dynamic_sampling=false."
            )

    def _check_grpo_lambda_fields(self) -> None:
        choices = {
            "loss_variant": LOSS_VARIANTS,
            "weight_clamp_fn": WEIGHT_CLAMP_FNS,
            "advantage_bias_correction": ADVANTAGE_BIAS_CORRECTIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}.")
        _ = self.trace  # building the TraceSpec checks trace_gamma, trace_lambda, trace_style and trace_floor
        if self.use_liger_kernel:
            self._check_liger()
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} must be a positive number of tokens (Table 2: "
                "256 for 1.5B and 3B, 768 for 7B)."
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(
                f"max_prompt_length={self.max_prompt_length} must be a positive number of tokens or null."
            )
        if not self.temperature > 0:  # also refuses NaN
            raise ValueError(
                f"temperature={self.temperature}: the policy's logits are divided by it, so it must be positive "
                "(the recipes sample at 0.9 or 1.0)."
            )
        if self.adv_clamp_min is not None and self.adv_clamp_min > 0:
            raise ValueError(
                f"adv_clamp_min={self.adv_clamp_min} would make every advantage positive; use −0.1 or null."
            )
        self._check_dynamic_sampling()
        if self.loss_variant == "grpo":
            return
        if self.loss_type not in TRACE_LOSS_TYPES:
            raise ValueError(
                f"loss_type={self.loss_type!r} does not clip a per-token ratio, so loss_variant={self.loss_variant!r} "
                f"is undefined for it. Set loss_type to one of {', '.join(TRACE_LOSS_TYPES)} or loss_variant=grpo."
            )
        if self.loss_variant == "eps_trace" and self.use_bias_correction_kl:
            raise ValueError(
                "use_bias_correction_kl=True would weight the KL term by the traced ratio of Eq. 2, not by πθ/πold. "
                "Set use_bias_correction_kl=false (the paper's plain k3 KL) or loss_variant=grpo/eps_weight."
            )
        if self.loss_variant == "eps_trace" and self.off_policy_mask_threshold is not None:
            raise ValueError(
                "off_policy_mask_threshold measures policy drift from the log-probabilities that ε-trace replaces by "
                "traced ones. Set off_policy_mask_threshold=null or loss_variant=grpo/eps_weight."
            )
        if self.importance_sampling_level != "token":
            raise ValueError(
                f"importance_sampling_level={self.importance_sampling_level!r} averages the ratio over the sequence, "
                f"which removes the per-token traces. Set importance_sampling_level=token or loss_variant=grpo."
            )


@dataclass
class DataArguments(ScriptArguments):
    """What to train on (TRL's `ScriptArguments` plus local copies, the prompt template and the built-in task)."""

    dataset_name: str | None = field(
        default="arithmetic",
        metadata={
            "help": "gsm8k, math12k, math-rl-16k, orz-57k, arithmetic (built in, offline) or a registered task, a local file or folder, "
            "or a Hub dataset id with problem/answer columns."
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A local copy of `dataset_name` (save_to_disk folder, .jsonl, .json or .parquet)."},
    )
    prompt_template: PromptTemplate = field(
        default="no",
        metadata={"help": "Prompt template and answer extraction: qwen_math (\\boxed{}), r1 (<answer>), no (bare)."},
    )
    arithmetic_train_size: int = field(
        default=2000, metadata={"help": "Number of training problems of the built-in arithmetic task."}
    )
    arithmetic_test_size: int = field(
        default=200, metadata={"help": "Number of held-out problems of the built-in arithmetic task."}
    )
    arithmetic_seed: int = field(default=0, metadata={"help": "Seed of the built-in arithmetic task generator."})
    arithmetic_level: Literal["one_step", "two_step"] = field(
        default="one_step", metadata={"help": "Difficulty of the built-in arithmetic task: one_step or two_step."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (null keeps all)."}
    )

    def __post_init__(self):
        check_template(self.prompt_template)
        if self.arithmetic_level not in ARITHMETIC_LEVELS:
            raise ValueError(
                f"arithmetic_level={self.arithmetic_level!r} is not one of {', '.join(ARITHMETIC_LEVELS)}."
            )

    def first_rows(self, dataset):
        """The training set cut to its first `max_train_samples` rows (whole when unset)."""
        if self.max_train_samples is None:
            return dataset
        return dataset.select(range(min(self.max_train_samples, len(dataset))))

    def arithmetic(self) -> dict:
        return dict(
            train_size=self.arithmetic_train_size,
            test_size=self.arithmetic_test_size,
            seed=self.arithmetic_seed,
            level=self.arithmetic_level,
        )


@dataclass
class GRPOScriptArguments(DataArguments):
    """Data plus how completions are scored."""

    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": "Reward functions, from: accuracy, format, exact (weights in `reward_weights`)."},
    )
    grading_timeout_s: float = field(
        default=5.0, metadata={"help": "Time bound per graded answer; a timed-out answer scores 0 and is counted."}
    )


@dataclass
class SFTScriptArguments(DataArguments):
    """Data of the format SFT stage: worked solutions rendered in the RL stage's prompt template."""


@dataclass
class FormatSFTConfig(WallTimeCheckpoints, SFTConfig):
    """TRL's `SFTConfig` plus `save_minutes`."""


CONFIG_ERROR = "configuration error:"
STAGES: dict[str, tuple] = {
    "grpo": (GRPOScriptArguments, GRPOLambdaConfig, ModelConfig),
    "sft": (SFTScriptArguments, FormatSFTConfig, ModelConfig),
}


class OneLineErrorParser(TrlParser):
    """TrlParser whose errors are one line, not argparse's full usage of a few hundred TrainingArguments."""

    def error(self, message: str):
        flag = re.match(r"argument (--\w+)\S*: expected one argument", message)
        if flag:  # argparse reads a value such as -1e-6 as an option of its own
            message += f" (a value that starts with '-' goes after '=': {flag[1]}=<value>)"
        raise GRPOLambdaError(f"{CONFIG_ERROR} {message}")


@dataclass(frozen=True)
class Settings:
    """A training stage's settings, resolved once: `values` is what a recipe file holds (the recipe with every
    override applied: what `<output_dir>/recipe.yaml` records), and `script`, `training`, `model` are what TrlParser
    makes of it, as the ranks do from `--config <output_dir>/recipe.yaml`. Whatever starts a run decides from
    these dataclasses, never from a reading of its own."""

    stage: str  # grpo | sft
    values: dict
    script: DataArguments
    training: GRPOLambdaConfig | FormatSFTConfig
    model: ModelConfig

    @property
    def parsed(self) -> tuple:
        """(script, training, model): what an entry point's `main` takes."""
        return self.script, self.training, self.model

    def text(self) -> str:
        """`values` as a recipe file."""
        return yaml.safe_dump(self.values, sort_keys=False, allow_unicode=True)


def read_recipe(path: str | os.PathLike) -> dict:
    """The mapping of a recipe file (its keys checked when parsed): the one reader of recipe files."""
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise GRPOLambdaError(f"cannot read recipe {path}: {error.strerror}.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise GRPOLambdaError(f"recipe {path} is not YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise GRPOLambdaError(f"recipe {path} must be a YAML mapping of settings (name: value).")
    return values


def flag_values(stage: str, flags: list[str]) -> dict:
    """The settings command-line flags give (`--bf16 t`, `--reward_funcs accuracy format`), typed by the stage's own
    parser (TrlParser's argparse, whose defaults are left out here): exactly what the ranks would read from them."""
    parser = OneLineErrorParser(STAGES[stage])
    for action in parser._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, unknown = parser.parse_known_args(list(flags))
    if unknown:
        raise GRPOLambdaError(f"{CONFIG_ERROR} unrecognized arguments: {' '.join(unknown)}")
    return {name: value.value if isinstance(value, Enum) else value for name, value in vars(given).items()}


def resolve_settings(stage: str, values: dict, for_reading: bool = False) -> Settings:
    """`values` (a recipe's mapping with overrides applied) parsed as the ranks parse a recipe file: written to one
    and read by TrlParser. `for_reading`: settings read (or planned) on a machine that will not train them, such as
    a login node without GPUs, where TrainingArguments refuses bf16 unless use_cpu is set: parsed with use_cpu
    there, `values` unchanged."""
    if stage not in STAGES:
        raise GRPOLambdaError(f"stage {stage!r} is not one of {', '.join(STAGES)}.")
    parsed = dict(values)
    if for_reading:
        import torch

        if not torch.cuda.is_available():
            parsed["use_cpu"] = True
    with tempfile.TemporaryDirectory(prefix="grpo_lambda-settings-") as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(parsed, sort_keys=False, allow_unicode=True), encoding="utf-8")
        script, training, model = _parse(STAGES[stage], ["--config", str(path)])
    check_values(values, training)
    return Settings(stage, dict(values), script, training, model)


# Fields only GRPO-λ's losses read (trainer.GRPOLambdaTrainer._apply_traces): loss_variant=grpo ignores them all, and
# eps_trace ignores the soft clamp of ε-weight.
TRACE_FIELDS = ("trace_style", "trace_lambda", "trace_gamma", "trace_floor", "weight_clamp_fn")


def check_values(values: dict, training: GRPOLambdaConfig | SFTConfig) -> None:
    """What TrlParser accepts but would train wrongly or uselessly, in either stage, refused in one line: max_steps 0
    (the Trainer plans 0 steps, runs one at learning rate 0 and says it finished; -1 is "num_train_epochs"), a
    negative learning rate, and settings (`values`: what the recipe and the overrides set, never a default) that the
    chosen method or mode ignores: trace fields with loss_variant=grpo, weight_clamp_fn with eps_trace, vllm_*
    without use_vllm. A recipe that sets use_vllm: false itself, or a `--use_vllm false` on top of a paper recipe
    (README: no vLLM), keeps its vllm_* settings for when vLLM is on."""
    if training.max_steps == 0:
        raise GRPOLambdaError(
            f"{CONFIG_ERROR} max_steps={training.max_steps} is no number of steps: give a positive number of "
            "optimizer steps, or -1 to train num_train_epochs over the training set."
        )
    if not training.learning_rate >= 0:  # also refuses NaN
        raise GRPOLambdaError(
            f"{CONFIG_ERROR} learning_rate={training.learning_rate} would climb the loss: give a positive learning "
            "rate (the recipes' RL stage: 1e-6)."
        )
    if not isinstance(training, GRPOLambdaConfig):
        return
    uses = {"grpo": (), "eps_trace": TRACE_FIELDS[:-1], "eps_weight": TRACE_FIELDS}[training.loss_variant]
    ignored = [name for name in TRACE_FIELDS if name in values and name not in uses]
    if ignored:
        them = "it" if len(ignored) == 1 else "them"
        fix = f"drop {them} (LOSS_VARIANT=grpo picks a recipe without trace settings), or train eps_trace|eps_weight"
        if training.loss_variant == "eps_trace":
            fix = "drop it, or set loss_variant=eps_weight, which reads it"
        raise GRPOLambdaError(
            f"{CONFIG_ERROR} {', '.join(f'{name}={values[name]}' for name in ignored)} would be ignored: "
            f"loss_variant={training.loss_variant} does not read {them}; {fix}."
        )
    vllm = [name for name in values if name.startswith("vllm_")]
    if vllm and not training.use_vllm and "use_vllm" not in values:
        raise GRPOLambdaError(
            f"{CONFIG_ERROR} {', '.join(f'{name}={values[name]}' for name in vllm)} would be ignored: use_vllm is "
            f"false (the default), so transformers generates the completions: set use_vllm true (VLLM_MODE=colocate|"
            f"server does) or drop {'it' if len(vllm) == 1 else 'them'}."
        )


def parse_settings(stage: str, argv: list[str]) -> Settings:
    """`[--config <recipe>] [--name value ...]`, the entry points' command line, resolved (`resolve_settings`)."""
    argv = list(argv)
    if "--config" not in argv:
        return resolve_settings(stage, flag_values(stage, argv))
    at = argv.index("--config")
    if argv.count("--config") > 1 or at + 1 >= len(argv):
        raise GRPOLambdaError(f"{CONFIG_ERROR} give one recipe: --config <recipe.yaml> [--name value ...].")
    recipe, flags = argv[at + 1], argv[:at] + argv[at + 2 :]
    return resolve_settings(stage, {**read_recipe(recipe), **flag_values(stage, flags)})


def parse_grpo_args(argv: list[str] | None = None) -> tuple[GRPOScriptArguments, GRPOLambdaConfig, ModelConfig]:
    """Parse `--config recipe.yaml` plus command-line overrides; a bad value or unknown key exits with one line."""
    return parse_settings("grpo", sys.argv[1:] if argv is None else argv).parsed


def parse_sft_args(argv: list[str] | None = None) -> tuple[SFTScriptArguments, FormatSFTConfig, ModelConfig]:
    """The same for the SFT stage (TRL's `SFTConfig` plus `save_minutes`)."""
    return parse_settings("sft", sys.argv[1:] if argv is None else argv).parsed


def _parse(dataclasses: tuple, argv: list[str] | None):
    parser = OneLineErrorParser(dataclasses)
    try:
        return parser.parse_args_and_config(args=argv)
    except GRPOLambdaError:
        raise  # OneLineErrorParser's own line, already prefixed
    except (ValueError, TypeError, ImportError) as error:
        message = " ".join(str(error).split())
        raise GRPOLambdaError(f"{CONFIG_ERROR} {message}") from None
