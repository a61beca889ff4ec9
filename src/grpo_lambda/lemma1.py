"""Lemma 1 (§3.1, proof in Appendix A.1): a bound on the bias of GRPO's baseline, from EOS probabilities.

GRPO's baseline is V(s_0) for every token; Lemma 1 bounds how far that is from V(s_t) with binary terminal rewards:

    ΔV(s_t) ≡ V(s_0) − V(s_t) ≤ 1 − Π_{k=0}^{t−1} Σ_{a_k ≠ EOS} π(a_k|s_k) = 1 − Π_{k<t} (1 − π(EOS|s_k)),

the probability that the policy would have ended the episode before t. How this is used, relative to plain GRPO:

1. Diagnostic (`lemma1_diagnostics: true`): the bound per completion token, from the policy forward the loss
   already runs (no extra forward), logged as `lemma1/…` (docs/metrics.md).
2. `advantage_bias_correction: eos_bound` adds the bound to the normalised advantage per token,
   δ_t = A_NAE + bound_t (Appendix A.2, "Relation with GRPO's NAE": the paper's preliminary experiment).

TRL 1.16 never materialises the [B, T, V] logits (its fused LM head returns log π of the sampled token only), so
π(EOS|s_k) is recovered from two logits and that log-probability (`eos_log_probs`).
"""

from __future__ import annotations

import torch


def eos_log_probs(
    per_token_logps: torch.Tensor, eos_logits: torch.Tensor, label_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log π(EOS|s_k) from the sampled token's log-probability and the raw logits of EOS and of the sampled token.

    With z the logits and Z the partition function at temperature τ, log π(a) = z_a/τ − log Z for every a, so

        log π(EOS|s_k) = log π(a_k|s_k) + (z_EOS − z_{a_k})/τ,

    and several EOS ids (a generation config may list more than one) combine by logsumexp over their logits.

    Args:
        per_token_logps: [B, T] log π(a_k|s_k) of the sampled tokens, at temperature τ.
        eos_logits: [B, T, E] raw logits of the E end-of-sequence ids at the same positions.
        label_logits: [B, T] raw logit of the sampled token.
    Returns:
        [B, T] log π(EOS|s_k) in the dtype of `per_token_logps` (≤ 0 up to rounding; clamp before use).
    """
    eos = torch.logsumexp(eos_logits.to(torch.float64) / temperature, dim=-1)
    log_probs = per_token_logps.to(torch.float64) + eos - label_logits.to(torch.float64) / temperature
    return log_probs.to(per_token_logps.dtype)


def lemma1_bound(eos_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Lemma 1's upper bound on ΔV(s_t) for each completion token t (Lemma 1, §3.1; Eq. 5 in Appendix A.1):

        bound_t = 1 − Π_{k<t, mask_k} (1 − π(EOS|s_k)),

    the probability of having emitted EOS before t. bound_0 = 0; it is non-decreasing in t and lies in [0, 1].
    The product runs in log space (log1p) in float64, so long completions neither underflow nor lose precision.

    Args:
        eos_log_probs: [B, T] log π(EOS|s_k) at each completion position k.
        mask: [B, T] completion mask; masked positions add no factor and get bound 0.
    Returns:
        [B, T] bound, float64.
    """
    mask = mask.to(torch.float64)
    eos_prob = eos_log_probs.to(torch.float64).exp().clamp(0.0, 1.0)
    log_survive = torch.log1p(-eos_prob).clamp(min=-1e4) * mask  # log(1 − π(EOS|s_k)), 0 where masked
    before_t = torch.cumsum(log_survive, dim=-1) - log_survive  # Σ_{k<t}
    return -torch.expm1(before_t) * mask


def eos_bound_advantages(advantages: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """`advantage_bias_correction: eos_bound`: δ_t = Â + bound_t (Appendix A.2: "we simply added the upper bound for
    ΔV(s_t) to A_NAE(s_t)"). The bound is a constant: no gradient flows through it.

    Args:
        advantages: [B] sequence-level or [B, T] per-token advantages.
        bound: [B, T] Lemma 1 bound (0 on masked tokens).
    Returns:
        [B, T] per-token advantages in the dtype of `advantages`.
    """
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    return advantages + bound.detach().to(advantages.dtype)
