"""GRPO-λ as a thin subclass of TRL's GRPOTrainer (written against trl==1.16.0, checked at start-up).

How it departs from TRL's GRPO, and how little it touches:

1. Advantages are clamped from below (`adv_clamp_min`) before TRL's loss sees them (Alg. 1–2).
2. ε-trace: TRL computes its ratio as exp(log πθ − log πold). We hand TRL, in place of log πθ, the traced
   log-probabilities log πold + Σ_l tr(t, l)(log πθ − log πold)(a_{t−l}) (Eq. 1–2), so TRL's own clipping,
   masking, loss_type reduction and metrics apply to the traced ratio. The reference log-probabilities are shifted
   by the same amount, which leaves TRL's k3 KL term exactly a function of the true log πθ.
   On-policy (TRL left `old_per_token_logps` out: num_iterations = 1, no vLLM importance sampling) and with no
   per-token loss factor (no entropy mask, [B] advantages), the traced log-probabilities take the elementwise form
   sg(log πθ) + c·(log πθ − sg(log πθ)) with the closed-form credit weights c: same value, same gradient, no scan.
3. ε-weight: TRL accepts per-token advantages of shape [B, T]; we pass Â·ε^w_t (Alg. 2). As ε^w_t > 0,
   −min(r Â ε^w, clip(r) Â ε^w) = ε^w·(−min(r Â, clip(r) Â)): the clipped per-token loss weighted by the trace.
4. `max_prompt_length` (gone from TRL 1.x) keeps the last N prompt tokens, as the paper's TRL did (Table 2: 256).
5. Lemma 1 (§3.1), when `lemma1_diagnostics` is on or `advantage_bias_correction: eos_bound` needs it: the bound
   on GRPO's baseline bias, from the final hidden states of the same policy forward (a hook on the backbone),
   logged as `lemma1/…`; `eos_bound` adds it to the advantages per token (Appendix A.2).
6. `dynamic_sampling` (DAPO): TRL's `_generate_and_score_completions` runs once per round, on the step's prompts and
   then on extra ones, until the rounds hold enough groups whose rewards vary; the batch TRL then splits into
   micro-batches is built from those groups alone (grpo_lambda.dynamic_sampling). The rewards of a round are read
   where TRL computes them (`_calculate_rewards`).

The seam with TRL. TRL's `_compute_loss` runs the policy forward (`_get_per_token_logps_and_entropies`) exactly
once, and reads the advantages, the old and the reference log-probabilities from its batch only after it. Our
`_compute_loss` puts a `LossBatch` (a shallow copy of TRL's batch) where that forward finds it; the forward
replaces entries of the copy (never tensors of the batch, which TRL reuses over `num_iterations`), and TRL's loss
then reads them. Forwards outside `_compute_loss` (old and reference log-probabilities at generation) are TRL's,
untouched. `check_trl_seam` verifies at start-up that the installed TRL is the one this was written against, and
that the forward ran once is checked at every loss; tests/test_trainer_loss.py checks the reading order.

Checkpoints are complete or absent (grpo_lambda.checkpoints.AtomicCheckpoints, shared with the SFT stage), whose
hooks into transformers' Trainer `check_trl_seam` verifies too.
"""

from __future__ import annotations

import copy
import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import trl
from trl import GRPOTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .checkpoints import AtomicCheckpoints, check_checkpoint_seam
from .configs import SUPPORTED_TRL_VERSION
from .dynamic_sampling import (
    IMPORTANCE_SAMPLING_RATIO,
    LEFT_PADDED,
    PER_ROW,
    RECOUNTED,
    RIGHT_PADDED,
    extra_prompt_indices,
    groups_with_reward_variance,
    select_groups,
    stack_groups,
    trim_padding,
)
from .errors import GRPOLambdaError
from .lemma1 import eos_bound_advantages, eos_log_probs, lemma1_bound
from .loss import (
    clamp_negative_advantages,
    eligibility_traced_log_probs,
    eps_weight_trace_weights,
    on_policy_traced_log_probs,
)
from .traces import credit_weights

# The GRPOTrainer methods the subclass overrides, with the leading parameters it passes on or reads.
TRL_SEAM: dict[str, tuple[str, ...]] = {
    "_compute_loss": ("self", "model", "inputs"),
    "_get_per_token_logps_and_entropies": ("self", "model", "input_ids", "attention_mask", "logits_to_keep"),
    "_tokenize_prompts": ("self", "prompts"),
    "_generate_and_score_completions": ("self", "inputs"),
    "_calculate_rewards": ("self", "inputs", "prompts", "completions", "completion_ids_list"),
}
LEMMA1_POSITIONS: tuple[int, ...] = (1, 8, 32)
logger = logging.getLogger(__name__)  # completion positions t at which `lemma1/bound_at_t` is logged


def check_trl_seam() -> None:
    """Raises ImportError, in one line, unless the installed TRL is the version the subclass was written against and
    its GRPOTrainer has the methods (with the leading parameters) that the subclass overrides, and transformers'
    Trainer has those the checkpoint mixin overrides (checkpoints.check_checkpoint_seam)."""
    fix = f"grpo_lambda's trainer hooks TRL's private loss path and supports trl=={SUPPORTED_TRL_VERSION} only"
    if trl.__version__ != SUPPORTED_TRL_VERSION:
        raise ImportError(f"{fix}; found trl=={trl.__version__}. Run: pip install trl=={SUPPORTED_TRL_VERSION}")
    for name, expected in TRL_SEAM.items():
        method = getattr(GRPOTrainer, name, None)
        found = tuple(inspect.signature(method).parameters)[: len(expected)] if callable(method) else ()
        if found != expected:
            raise ImportError(f"{fix}; its GRPOTrainer.{name} is not {name}({', '.join(expected)}, …) here.")
    check_checkpoint_seam()


def _seam_error(what: str) -> str:
    return f"TRL's GRPOTrainer._compute_loss {what}; GRPO-λ's loss expects one (trl=={SUPPORTED_TRL_VERSION})."


@dataclass
class LossBatch:
    """One `_compute_loss` call's batch, for the one policy forward TRL runs inside it.

    `inputs` is a shallow copy of the batch TRL passed in: the forward replaces its entries (advantages, old and
    reference log-probabilities), which TRL's loss reads after the forward, and leaves TRL's batch as it was."""

    inputs: dict[str, Any]
    policy_forwards: int = 0


class GRPOLambdaTrainer(AtomicCheckpoints, GRPOTrainer):
    """GRPOTrainer whose policy loss is `args.loss_variant` (grpo, eps_trace, eps_weight); args: GRPOLambdaConfig."""

    def __init__(self, *args, **kwargs):
        check_trl_seam()
        self._loss_batch: LossBatch | None = None
        self._round_rewards: torch.Tensor | None = None  # the rewards TRL computed in the last generation round
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        batch = LossBatch(copy.copy(inputs))
        batch.inputs["advantages"] = clamp_negative_advantages(inputs["advantages"], self.args.adv_clamp_min)
        self._loss_batch = batch
        try:
            loss = super()._compute_loss(model, batch.inputs)
        finally:
            self._loss_batch = None
        if batch.policy_forwards != 1:
            raise RuntimeError(_seam_error(f"ran {batch.policy_forwards} policy forwards"))
        return loss

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        batch = self._loss_batch
        if batch is None:  # generation-time forwards (old / reference log-probs): TRL's own
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        batch.policy_forwards += 1
        if batch.policy_forwards > 1:
            raise RuntimeError(_seam_error("ran a second policy forward"))
        lemma1 = self.args.lemma1_enabled
        with self._final_hidden_states(model, enabled=lemma1) as hidden_states:
            logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        if lemma1:
            self._lemma1(model, batch.inputs, input_ids[:, -logits_to_keep:], logps, hidden_states, logits_to_keep)
        if self.args.loss_variant != "grpo":
            logps = self._apply_traces(batch.inputs, logps)
        return logps, entropies, aux_loss

    def _apply_traces(self, inputs: dict, logps: torch.Tensor) -> torch.Tensor:
        """ε-trace: returns the traced log-probabilities and shifts the reference ones; ε-weight: returns `logps` and
        replaces the advantages by Â·ε^w. Writes `old_per_token_logps` (log πθ detached when TRL left it out)."""
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        trace = self.args.trace  # TraceSpec, from the config as it is now (a bench may switch it between steps)
        on_policy = self._on_policy_fast_path(inputs)
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        inputs["old_per_token_logps"] = old_logps
        means = {"trace/credit_weight_mean": credit_weights(mask, trace)}

        if self.args.loss_variant == "eps_trace":
            if on_policy:
                traced_logps = on_policy_traced_log_probs(logps, mask, trace)
            else:
                traced_logps = eligibility_traced_log_probs(logps, old_logps, mask, trace)
            if "ref_per_token_logps" in inputs:
                inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] + (traced_logps - logps)
            traced_log_ratio = traced_logps.detach() - old_logps
            means["trace/log_ratio_abs_mean"] = traced_log_ratio.abs()
            means["trace/ratio_mean"] = traced_log_ratio.exp()
            self._log_means({name: (values, mask) for name, values in means.items()})
            return traced_logps

        weights = eps_weight_trace_weights(old_logps, mask, trace, fn=self.args.weight_clamp_fn)
        means["trace/eps_weight_mean"] = weights
        self._log_means({name: (values, mask) for name, values in means.items()})
        advantages = inputs["advantages"]  # Â·ε^w, in place (one [B, T] tensor fewer) now that ε^w is logged
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        inputs["advantages"] = weights.to(advantages.dtype).mul_(advantages)
        return logps

    def _on_policy_fast_path(self, inputs: dict) -> bool:
        """Whether `on_policy_traced_log_probs` gives the general path's loss and gradient exactly: πold = πθ in
        value (TRL only leaves `old_per_token_logps` out when they are equal), and the loss's gradient is the same at
        every real token of a sequence (no per-token importance-sampling ratio, entropy mask or advantage)."""
        return (
            inputs.get("old_per_token_logps") is None
            and "importance_sampling_ratio" not in inputs
            and self.top_entropy_quantile == 1.0
            and inputs["advantages"].dim() == 1
        )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._round_rewards = rewards_per_func  # [N, reward functions], gathered over processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if not (self.args.dynamic_sampling and self.model.training):
            return super()._generate_and_score_completions(inputs)
        return self._dynamically_sampled_batch(inputs)

    def _dynamically_sampled_batch(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
        """This process's part of a batch of the configured number of groups, each with varying rewards when the
        rounds (at most `dynamic_sampling_max_rounds`) found enough; the earliest zero-variance groups otherwise."""
        rows, generations = len(inputs), self.num_generations
        target_groups = rows * self.accelerator.num_processes // generations
        sequence_level = self._sequence_level_importance_sampling()
        tokens_before = self.state.num_input_tokens_seen
        rounds, keep, first_round_tokens = [], [], 0
        for round_index in range(self.args.dynamic_sampling_max_rounds):
            round_inputs = inputs if round_index == 0 else self._extra_round_inputs(round_index, rows)
            self._round_rewards = None
            batch = super()._generate_and_score_completions(round_inputs)
            if self._round_rewards is None:
                raise RuntimeError(
                    "TRL's GRPOTrainer._generate_and_score_completions computed no rewards through "
                    f"_calculate_rewards; dynamic sampling reads them there (trl=={SUPPORTED_TRL_VERSION})."
                )
            rounds.append(self._gather_round(batch, sequence_level))
            keep.append(groups_with_reward_variance(self._total_rewards(self._round_rewards), generations))
            if round_index == 0:
                first_round_tokens = self.state.num_input_tokens_seen - tokens_before
            if sum(int(mask.sum()) for mask in keep) >= target_groups:
                break
        selection = select_groups(keep, target_groups)
        batch = stack_groups(rounds, selection, generations, self._tokenizer.pad_token_id, sequence_level)
        start = self.accelerator.process_index * rows
        local = {key: value if key in RECOUNTED else value[start : start + rows] for key, value in batch.items()}

        generated_tokens = self.state.num_input_tokens_seen - tokens_before
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/rounds"].append(len(rounds))
        metrics["dynamic_sampling/groups_generated"].append(sum(mask.numel() for mask in keep))
        metrics["dynamic_sampling/groups_kept"].append(selection.kept)
        metrics["dynamic_sampling/groups_filled"].append(selection.filled)
        metrics["dynamic_sampling/generated_tokens"].append(generated_tokens)
        metrics["dynamic_sampling/extra_generated_tokens"].append(generated_tokens - first_round_tokens)
        if selection.filled and self.accelerator.is_main_process:
            logger.warning(
                "dynamic sampling, step %d: %d rounds kept %d of the %d groups the batch needs; %d zero-variance "
                "groups fill it (dynamic_sampling_max_rounds=%d)",
                self.state.global_step,
                len(rounds),
                selection.kept,
                target_groups,
                selection.filled,
                self.args.dynamic_sampling_max_rounds,
            )
        return trim_padding(local, self.pad_to_multiple_of, sequence_level)

    def _sequence_level_importance_sampling(self) -> bool:
        return self.vllm_importance_sampling_mode in ("sequence_mask", "sequence_truncate")

    def _total_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """TRL's total reward per completion: the weighted sum over reward functions, NaN where none scored it."""
        total = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        return total.masked_fill(rewards_per_func.isnan().all(dim=1), float("nan"))

    def _extra_round_inputs(self, round_index: int, rows: int) -> list[dict]:
        """This process's rows of an extra round: as many prompts as the step's, each `num_generations` times in a
        row and split over processes as TRL's sampler and dataloader split the step's (RepeatSampler)."""
        generations, processes = self.num_generations, self.accelerator.num_processes
        indices = extra_prompt_indices(
            len(self.train_dataset),
            rows * processes // generations,
            self.state.global_step,
            round_index,
            self.args.dynamic_sampling_max_rounds,
            self.args.seed,
        )
        start = self.accelerator.process_index * rows
        every_row = [index for index in indices for _ in range(generations)]
        return [self.train_dataset[index] for index in every_row[start : start + rows]]

    def _gather_round(self, batch: dict[str, torch.Tensor], sequence_level: bool) -> dict[str, torch.Tensor]:
        """A round's batch from every process, in process order (TRL's order of the groups), widths padded alike."""
        known = {*LEFT_PADDED, *RIGHT_PADDED, *PER_ROW, *RECOUNTED, IMPORTANCE_SAMPLING_RATIO}
        unknown = sorted(set(batch) - known)
        if unknown:
            raise GRPOLambdaError(
                f"dynamic_sampling does not know TRL's batch entries {unknown} (multimodal or tool inputs); "
                "set dynamic_sampling=false."
            )
        gathered = {}
        for key, value in batch.items():
            if key in RECOUNTED:
                continue
            if key in LEFT_PADDED or key in RIGHT_PADDED or (key == IMPORTANCE_SAMPLING_RATIO and not sequence_level):
                pad = {**LEFT_PADDED, **RIGHT_PADDED}.get(key, 0.0)
                pad = self._tokenizer.pad_token_id if pad is None else pad
                value = self.accelerator.pad_across_processes(
                    value, dim=1, pad_index=pad, pad_first=key in LEFT_PADDED
                )
            gathered[key] = self.accelerator.gather(value)
        return gathered

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.args.max_prompt_length is not None:  # left truncation, as TRL < 0.20 (the paper's TRL) did
            prompt_ids = [ids[-self.args.max_prompt_length :] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields

    @torch.no_grad()
    def _log_means(self, means: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Logs Σ values·weights / Σ weights over all processes for each name, in one reduction and one host sync.
        A name whose weights sum to 0 everywhere (e.g. `lemma1/bound_at_32` when no completion is that long) is not
        logged at this step, so its logged value averages the steps that had one."""
        totals = torch.stack(
            [total for values, weights in means.values() for total in self._weighted_totals(values, weights)]
        )
        totals = self.accelerator.reduce(totals, reduction="sum").tolist()  # every process calls it
        mode = "train" if self.model.training else "eval"
        for index, name in enumerate(means):
            total, weight = totals[2 * index], totals[2 * index + 1]
            if weight > 0:
                self._metrics[mode][name].append(total / weight)

    @staticmethod
    def _weighted_totals(values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = weights.to(torch.float64)
        return (values.to(torch.float64) * weights).sum(), weights.sum()

    @contextmanager
    def _final_hidden_states(self, model, enabled: bool):
        """Collects the backbone's last hidden states of the forwards run inside (one per chunk TRL scores)."""
        chunks: list[torch.Tensor] = []
        if not enabled:
            yield chunks
            return
        unwrapped = self.accelerator.unwrap_model(model)
        if hasattr(unwrapped, "get_base_model"):  # PEFT
            unwrapped = unwrapped.get_base_model()

        def keep(module, args, output):
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            chunks.append(hidden.detach())

        handle = unwrapped.base_model.register_forward_hook(keep)
        try:
            yield chunks
        finally:
            handle.remove()

    @torch.no_grad()
    def _lemma1(self, model, inputs, completion_ids, logps, hidden_chunks, logits_to_keep) -> None:
        """Lemma 1's bound from the policy forward of the loss; adds it to the advantages under `eos_bound`."""
        mask = inputs["completion_mask"]
        if not hidden_chunks:  # a model whose backbone is not `base_model`: nothing to log
            return
        # hidden state i predicts token i + 1; the completion's states s_k sit just before its tokens
        hidden = torch.cat(hidden_chunks)[:, -logits_to_keep - 1 : -1]
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        with maybe_gather_lm_head_ctx(head.weight, head.bias):  # float32: bf16 logits would blur small π(EOS)
            weight = head.weight
            hidden = hidden.to(device=weight.device, dtype=torch.float32)
            eos_ids = torch.tensor(self.eos_token_ids, device=weight.device)
            eos_logits = hidden @ weight[eos_ids].float().T  # [B, T, E]
            label_logits = torch.einsum("bth,bth->bt", hidden, weight[completion_ids].float())  # [B, T]
            if head.bias is not None:
                eos_logits = eos_logits + head.bias[eos_ids].float()
                label_logits = label_logits + head.bias[completion_ids].float()
        log_eos = eos_log_probs(logps.detach(), eos_logits, label_logits, self.temperature)
        bound = lemma1_bound(log_eos, mask)
        if self.args.advantage_bias_correction == "eos_bound":
            inputs["advantages"] = eos_bound_advantages(inputs["advantages"], bound)

        float_mask = mask.to(torch.float64)
        last_token = float_mask * (1.0 - torch.nn.functional.pad(float_mask[:, 1:], (0, 1)))
        means = {
            "lemma1/bound_mean": (bound, float_mask),
            "lemma1/eos_prob_mean": (log_eos.exp(), float_mask),
            "lemma1/bound_final": (bound, last_token),
        }
        for position in LEMMA1_POSITIONS:
            at_position = torch.zeros_like(float_mask)
            if position < at_position.size(1):
                at_position[:, position] = float_mask[:, position]
            means[f"lemma1/bound_at_{position}"] = (bound, at_position)
        self._log_means(means)
