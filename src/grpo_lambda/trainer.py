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

Both hooks act only on the policy forward inside `_compute_loss`; reference and old-policy forwards are TRL's.
The batch dict TRL buffers (and reuses over `num_iterations`) is never modified: we work on a shallow copy.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from .loss import (
    clamp_negative_advantages,
    eligibility_trace_log_ratio,
    eps_weight_trace_weights,
    on_policy_traced_log_probs,
)
from .traces import credit_weights


class GRPOLambdaTrainer(GRPOTrainer):
    """GRPOTrainer whose policy loss is `args.loss_variant` (grpo, eps_trace, eps_weight); args: GRPOLambdaConfig."""

    def __init__(self, *args, **kwargs):
        self._loss_inputs: dict | None = None
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs):
        if self.args.loss_variant == "grpo" and self.args.adv_clamp_min is None:
            return super()._compute_loss(model, inputs)
        inputs = dict(inputs)
        inputs["advantages"] = clamp_negative_advantages(inputs["advantages"], self.args.adv_clamp_min)
        self._loss_inputs = inputs if self.args.loss_variant != "grpo" else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_inputs = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        inputs, self._loss_inputs = self._loss_inputs, None
        if inputs is None:  # generation-time forwards (old / reference log-probs) and plain GRPO
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
                traced_log_ratio = traced_logps - old_logps
            else:
                traced_log_ratio = eligibility_trace_log_ratio(logps, old_logps, mask, **trace)
                traced_logps = old_logps + traced_log_ratio
            if "ref_per_token_logps" in inputs:
                inputs["ref_per_token_logps"] = inputs["ref_per_token_logps"] + (traced_logps - logps)
            metrics["trace/log_ratio_abs_mean"] = traced_log_ratio.detach().abs()
            metrics["trace/ratio_mean"] = traced_log_ratio.detach().exp()
            logps = traced_logps
        else:
            weights = eps_weight_trace_weights(old_logps, mask, fn=args.weight_clamp_fn, **trace)
            advantages = inputs["advantages"]
            advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            inputs["advantages"] = advantages * weights.to(advantages.dtype)
            metrics["trace/eps_weight_mean"] = weights

        self._log_trace_metrics(metrics, mask)
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
