"""Builds TRL's GRPOTrainer and ours on the same tiny model, and a batch as TRL's generation step leaves it."""

from __future__ import annotations

import copy

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.trainer import GRPOLambdaTrainer

MAX_COMPLETION = 12


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


def make_trainer(model_dir, output_dir, lambda_trainer: bool, **overrides):
    """A trainer in float64 (so that loss and gradient comparisons are tight) that is ready for `_compute_loss`."""
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
    args = GRPOLambdaConfig(**common) if lambda_trainer else GRPOConfig(**common)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = Dataset.from_dict({"prompt": ["1 + 1 ="] * 4})
    trainer_class = GRPOLambdaTrainer if lambda_trainer else GRPOTrainer
    trainer = trainer_class(
        model=model, reward_funcs=constant_reward, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def make_batch(
    vocab_size: int, seed: int = 0, batch: int = 4, prompt_len: int = 5, completion_len: int = MAX_COMPLETION
):
    """Right-padded completions of different lengths, group-normalised advantages of both signs."""
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab_size, (batch, prompt_len), generator=generator)
    completion_ids = torch.randint(3, vocab_size, (batch, completion_len), generator=generator)
    lengths = torch.tensor([completion_len, completion_len - 3, 4, completion_len - 1][:batch])
    completion_mask = (torch.arange(completion_len)[None, :] < lengths[:, None]).long()
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
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, copy.copy(batch))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    return loss.detach(), grads


def with_reference_logps(trainer, batch, beta_noise_seed=1, old_noise=0.0):
    """Adds reference (and optionally stale old-policy) log-probs as TRL's generation step would."""
    batch = dict(batch)
    with torch.no_grad():
        logps = completion_logps(trainer, batch)
    generator = torch.Generator().manual_seed(beta_noise_seed)
    batch["ref_per_token_logps"] = logps + 0.05 * torch.randn(logps.shape, generator=generator, dtype=logps.dtype)
    if old_noise:
        batch["old_per_token_logps"] = logps + old_noise * torch.randn(
            logps.shape, generator=generator, dtype=logps.dtype
        )
    return batch
