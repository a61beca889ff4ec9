"""Shared test helpers: masks, the dense reference of the traces, and TRL's GRPOTrainer and ours on a tiny model."""

from __future__ import annotations

import copy
import functools

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.traces import TraceSpec, trace_matrix
from grpo_lambda.trainer import GRPOLambdaTrainer

MAX_COMPLETION = 12


def right_padded_mask(lengths: list[int] | torch.Tensor, length: int) -> torch.Tensor:
    """[B, T] int64 mask whose row i holds lengths[i] ones, then zeros (TRL's completion mask)."""
    return (torch.arange(length)[None, :] < torch.as_tensor(lengths)[:, None]).long()


def masks_with_holes_and_padding(batch: int, length: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A mask with holes (random zeros anywhere) and a right-padded one (random lengths, one full row and, with three
    rows or more, one empty row), both float64."""
    holes = (torch.rand(batch, length, generator=generator) > 0.25).to(torch.float64)
    lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    lengths[0] = length
    if batch >= 3:
        lengths[-1] = 0
    return {"holes": holes, "right-padded": right_padded_mask(lengths, length).to(torch.float64)}


@functools.lru_cache(maxsize=64)
def _cached_trace_matrix(length: int, trace: TraceSpec) -> torch.Tensor:
    return trace_matrix(length, trace)


def dense_trace_matrix(length: int, trace: TraceSpec) -> torch.Tensor:
    """`trace_matrix`, the dense reference, built once per (T, trace) up to T = 1024 (8 MiB each) and per call above."""
    return _cached_trace_matrix(length, trace) if length <= 1024 else trace_matrix(length, trace)


def dense_traced_sum(values: torch.Tensor, mask: torch.Tensor, trace: TraceSpec) -> torch.Tensor:
    """S = (v·mask) @ Wᵀ in float64: Σ_{k ≤ t, mask_k} tr(t, t − k)·v_k (Eq. 17–18)."""
    return (values.to(torch.float64) * mask) @ dense_trace_matrix(values.shape[-1], trace).T


def dense_adjoint(grad: torch.Tensor, mask: torch.Tensor, trace: TraceSpec) -> torch.Tensor:
    """G = (g @ W)·mask in float64: Σ_{t ≥ k} tr(t, t − k)·g_t at each real token k (the transpose)."""
    return (grad.to(torch.float64) @ dense_trace_matrix(grad.shape[-1], trace)) * mask


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


def trainer_args(output_dir, lambda_trainer: bool, **overrides) -> GRPOConfig:
    """A float64-friendly config (so that loss and gradient comparisons are tight) for `make_trainer`."""
    common = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=MAX_COMPLETION,
        use_cpu=True,
        bf16=False,
        report_to="none",
        temperature=1.0,
        beta=0.0,
        loss_type="grpo",
        use_bias_correction_kl=False,  # TRL's default is True; the paper's KL is plain k3 (see configs.py)
    )
    common.update(overrides)
    return GRPOLambdaConfig(**common) if lambda_trainer else GRPOConfig(**common)


def make_trainer(model_dir, output_dir, lambda_trainer: bool, dtype=torch.float64, **overrides):
    """TRL's GRPOTrainer or ours on the tiny model, ready for `_compute_loss` (as one training micro-step)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": ["1 + 1 ="] * 4})
    trainer_class = GRPOLambdaTrainer if lambda_trainer else GRPOTrainer
    trainer = trainer_class(
        model=model,
        reward_funcs=constant_reward,
        args=trainer_args(output_dir, lambda_trainer, **overrides),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


# Config fields that GRPOTrainer.__init__ copies into attributes that its loss reads (trainer attribute: field);
# GRPOLambdaTrainer reads its own fields from `args` when it uses them.
_DERIVED_ATTRIBUTES = {
    "loss_type": "loss_type",
    "beta": "beta",
    "top_entropy_quantile": "top_entropy_quantile",
    "importance_sampling_level": "importance_sampling_level",
    "off_policy_mask_threshold": "off_policy_mask_threshold",
    "temperature": "temperature",
    "num_iterations": "num_iterations",
    "max_completion_length": "max_completion_length",
    "epsilon_low": "epsilon",
}


def configure(trainer, **overrides):
    """Gives a shared trainer a fresh config (the test's fields over `trainer_args`'), as if built with it: the
    config is validated again and the attributes the loss reads are copied from it. Returns the trainer."""
    lambda_trainer = isinstance(trainer, GRPOLambdaTrainer)
    keep_state = {"use_configured_state": True}  # a new TrainingArguments would reset the trainer's accelerator
    trainer.args = trainer_args(trainer.args.output_dir, lambda_trainer, accelerator_config=keep_state, **overrides)
    for attribute, field in _DERIVED_ATTRIBUTES.items():
        setattr(trainer, attribute, getattr(trainer.args, field))
    trainer.epsilon_high = trainer.args.epsilon_high if trainer.args.epsilon_high is not None else trainer.epsilon_low
    return trainer


def make_batch(
    vocab_size: int, seed: int = 0, batch: int = 4, prompt_len: int = 5, completion_len: int = MAX_COMPLETION
):
    """Right-padded completions of different lengths, advantages of both signs, as TRL's generation step leaves them."""
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab_size, (batch, prompt_len), generator=generator)
    completion_ids = torch.randint(3, vocab_size, (batch, completion_len), generator=generator)
    completion_mask = right_padded_mask(
        [completion_len, completion_len - 3, 4, completion_len - 1][:batch], completion_len
    )
    advantages = torch.randn(batch, generator=generator, dtype=torch.float64)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum().to(torch.float64),
    }


def completion_logps(trainer, batch) -> torch.Tensor:
    """log π(a_t | s_t) of the completion tokens, [B, T], by TRL's own forward (its fused LM head computes them in
    float32), called on the GRPOTrainer class so that no GRPO-λ hook runs."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
        trainer, trainer.model, input_ids, attention_mask, batch["completion_ids"].shape[1]
    )
    return logps


def loss_and_grads(trainer, batch):
    """TRL's (or our) `_compute_loss` on a copy of the batch, and the parameters' gradients."""
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, copy.copy(batch))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    return loss.detach(), grads


def with_reference_logps(trainer, batch, seed=1, old_noise=0.0):
    """Adds reference (and, with `old_noise`, stale old-policy) log-probs as TRL's generation step would."""
    batch = dict(batch)
    with torch.no_grad():
        logps = completion_logps(trainer, batch)
    generator = torch.Generator().manual_seed(seed)
    batch["ref_per_token_logps"] = logps + 0.05 * torch.randn(logps.shape, generator=generator, dtype=logps.dtype)
    if old_noise:
        batch["old_per_token_logps"] = logps + old_noise * torch.randn(
            logps.shape, generator=generator, dtype=logps.dtype
        )
    return batch
