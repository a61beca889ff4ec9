"""GRPO-λ as a thin subclass of TRL's GRPOTrainer (tested against trl==1.16.0).

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
5. Lemma 1 (§3.1): the bound on GRPO's baseline bias is computed from the final hidden states of the same policy
   forward (a hook on the backbone) and logged as `lemma1/…`; `advantage_bias_correction: eos_bound` adds it to
   the advantages per token (Appendix A.2).

Both hooks act only on the policy forward inside `_compute_loss`; reference and old-policy forwards are TRL's.
The batch dict TRL buffers (and reuses over `num_iterations`) is never modified: we work on a shallow copy.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from trl import GRPOTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .lemma1 import eos_bound_advantages, eos_log_probs, lemma1_bound
from .loss import (
    clamp_negative_advantages,
    eligibility_traced_log_probs,
    eps_weight_trace_weights,
    on_policy_traced_log_probs,
)
from .traces import credit_weights

LEMMA1_POSITIONS: tuple[int, ...] = (1, 8, 32)  # completion positions t at which `lemma1/bound_at_t` is logged


class GRPOLambdaTrainer(GRPOTrainer):
    """GRPOTrainer whose policy loss is `args.loss_variant` (grpo, eps_trace, eps_weight); args: GRPOLambdaConfig."""

    def __init__(self, *args, **kwargs):
        self._loss_inputs: dict | None = None
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        inputs = dict(inputs)
        inputs["advantages"] = clamp_negative_advantages(inputs["advantages"], self.args.adv_clamp_min)
        self._loss_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        inputs, self._loss_inputs = self._loss_inputs, None
        with self._final_hidden_states(model, enabled=inputs is not None) as hidden_states:
            logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        if inputs is None:  # generation-time forwards (old / reference log-probs)
            return logps, entropies, aux_loss
        self._lemma1(model, inputs, input_ids[:, -logits_to_keep:], logps, hidden_states, logits_to_keep)
        if self.args.loss_variant == "grpo":
            return logps, entropies, aux_loss

        args = self.args
        trace = dict(gamma=args.trace_gamma, lam=args.trace_lambda, style=args.trace_style, floor=args.trace_floor)
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        on_policy = self._on_policy_fast_path(inputs)
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        inputs["old_per_token_logps"] = old_logps
        credit = credit_weights(mask, **trace)
        metrics = {"trace/credit_weight_mean": credit}

        if args.loss_variant == "eps_trace":
            if on_policy:
                traced_logps = on_policy_traced_log_probs(logps, mask, **trace)
            else:
                traced_logps = eligibility_traced_log_probs(logps, old_logps, mask, **trace)
            if "ref_per_token_logps" in inputs:
                inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] + (traced_logps - logps)
            traced_log_ratio = traced_logps.detach() - old_logps
            metrics["trace/log_ratio_abs_mean"] = traced_log_ratio.abs()
            metrics["trace/ratio_mean"] = traced_log_ratio.exp()
            logps = traced_logps
        else:
            weights = eps_weight_trace_weights(old_logps, mask, fn=args.weight_clamp_fn, **trace)
            metrics["trace/eps_weight_mean"] = weights

        self._log_trace_metrics(metrics, mask)
        if args.loss_variant == "eps_weight":  # Â·ε^w, in place (one [B, T] tensor fewer) now that ε^w is logged
            advantages = inputs["advantages"]
            advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            inputs["advantages"] = weights.to(advantages.dtype).mul_(advantages)
        return logps, entropies, aux_loss

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

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.args.max_prompt_length is not None:  # left truncation, as TRL < 0.20 (the paper's TRL) did
            prompt_ids = [ids[-self.args.max_prompt_length :] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields

    @torch.no_grad()
    def _log_trace_metrics(self, metrics: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        mode = "train" if self.model.training else "eval"
        mask = mask.to(torch.float64)
        for name, values in metrics.items():
            totals = torch.stack([(values.to(torch.float64) * mask).sum(), mask.sum()])
            totals = self.accelerator.reduce(totals, reduction="sum")
            self._metrics[mode][name].append((totals[0] / totals[1].clamp(min=1.0)).item())

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
        self._log_lemma1_mean("lemma1/bound_mean", bound, float_mask)
        self._log_lemma1_mean("lemma1/eos_prob_mean", log_eos.exp(), float_mask)
        self._log_lemma1_mean("lemma1/bound_final", bound, last_token)
        for position in LEMMA1_POSITIONS:
            at_position = torch.zeros_like(float_mask)
            if position < at_position.size(1):
                at_position[:, position] = float_mask[:, position]
            self._log_lemma1_mean(f"lemma1/bound_at_{position}", bound, at_position)

    def _log_lemma1_mean(self, name: str, values: torch.Tensor, weights: torch.Tensor) -> None:
        """Weighted mean over all processes; nothing is logged when no completion reaches the position (e.g. t = 32
        of shorter ones), so the logged value averages the steps that had one."""
        totals = torch.stack([(values.to(torch.float64) * weights).sum(), weights.sum()])
        totals = self.accelerator.reduce(totals, reduction="sum")  # every process calls it, whatever its batch
        if totals[1] > 0:
            self._metrics["train" if self.model.training else "eval"][name].append((totals[0] / totals[1]).item())
