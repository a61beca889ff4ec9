"""Lemma 1 (§3.1): the bound against a float64 loop over full logits, its properties, and `eos_bound`."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.lemma1 import eos_bound_advantages, eos_log_probs, lemma1_bound
from grpo_lambda.trainer import LEMMA1_POSITIONS
from helpers import configure, make_trainer, right_padded_mask


def reference_bound(eos_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """bound_t = 1 − Π_{k<t, mask_k}(1 − p_k), by a plain double loop in float64; 0 on masked tokens."""
    batch, length = eos_probs.shape
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            if not mask[b, t]:
                continue
            survive = 1.0
            for k in range(t):
                if mask[b, k]:
                    survive *= 1.0 - float(eos_probs[b, k])
            out[b, t] = 1.0 - survive
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 40)])
def test_bound_matches_loop_lies_in_unit_interval_and_grows(seed, shape):
    generator = torch.Generator().manual_seed(seed)
    eos_probs = torch.rand(shape, generator=generator, dtype=torch.float64) ** 3
    mask = (torch.rand(shape, generator=generator) > 0.2).long()
    bound = lemma1_bound(eos_probs.log(), mask)
    torch.testing.assert_close(bound, reference_bound(eos_probs, mask), rtol=1e-12, atol=1e-12)
    assert bound.min() >= 0.0 and bound.max() <= 1.0
    for b in range(shape[0]):
        real = bound[b][mask[b].bool()]
        assert torch.all(real[1:] >= real[:-1]), "non-decreasing in t over real tokens"
    assert torch.all(bound[mask == 0] == 0)


def test_hand_example():
    # p = (0.5, 0.2, 0.1): bound = 0, 1 − 0.5 = 0.5, 1 − 0.5·0.8 = 0.6; a padded tail gets 0 and changes nothing.
    eos_probs = torch.tensor([[0.5, 0.2, 0.1, 0.9, 0.9]], dtype=torch.float64)
    bound = lemma1_bound(eos_probs.log(), right_padded_mask([3], 5))
    torch.testing.assert_close(bound, torch.tensor([[0.0, 0.5, 0.6, 0.0, 0.0]], dtype=torch.float64))


def test_padding_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    eos_probs = torch.rand(2, 6, dtype=torch.float64, generator=generator)
    short = lemma1_bound(eos_probs.log(), right_padded_mask([4, 6], 6))
    padded = lemma1_bound(
        torch.cat([eos_probs, torch.rand(2, 5, dtype=torch.float64, generator=generator)], 1).log(),
        right_padded_mask([4, 6], 11),
    )
    torch.testing.assert_close(padded[:, :6], short)


def test_certain_eos_and_long_completions_stay_finite():
    eos_log = torch.full((1, 5000), math.log(1e-3), dtype=torch.float64)
    eos_log[0, 2] = 0.0  # π(EOS) = 1: every later bound is exactly 1
    bound = lemma1_bound(eos_log, torch.ones(1, 5000))
    assert torch.isfinite(bound).all() and bound[0, 3:].eq(1.0).all() and bound[0, 2] < 1.0


def test_eos_log_probs_from_two_logits_equal_the_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator, dtype=torch.float64) * 3
    labels = torch.randint(0, 11, (2, 5), generator=generator)
    eos_ids = torch.tensor([3, 7])
    for temperature in (1.0, 0.7):
        log_softmax = torch.log_softmax(logits / temperature, dim=-1)
        label_logps = log_softmax.gather(-1, labels[..., None])[..., 0]
        got = eos_log_probs(
            label_logps, logits[..., eos_ids], logits.gather(-1, labels[..., None])[..., 0], temperature
        )
        torch.testing.assert_close(got, torch.logsumexp(log_softmax[..., eos_ids], dim=-1))


def test_eos_bound_adds_the_bound_per_token():
    bound = torch.tensor([[0.0, 0.1, 0.3], [0.0, 0.5, 0.0]], dtype=torch.float64)
    sequence_level = eos_bound_advantages(torch.tensor([1.0, -2.0]), bound)
    torch.testing.assert_close(sequence_level, torch.tensor([[1.0, 1.1, 1.3], [-2.0, -1.5, -2.0]]))
    per_token = eos_bound_advantages(torch.ones(2, 3), bound)
    torch.testing.assert_close(per_token, 1.0 + bound.float())


@pytest.fixture(scope="module")
def eos_heavy_trainer(tiny_model_dir, tmp_path_factory):
    """Our trainer on a float32 tiny model whose EOS logit is raised (a random tiny model puts ~1/V on EOS), so that
    the bound is far from 0; and the same weights in float64 for the reference."""
    trainer = make_trainer(tiny_model_dir, tmp_path_factory.mktemp("lemma1"), True, dtype=torch.float32)
    eos = trainer.processing_class.eos_token_id
    with torch.no_grad():
        trainer.model.get_output_embeddings().weight[eos] *= 4.0
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    reference.load_state_dict(trainer.model.state_dict())
    return trainer, reference


LEMMA1_CASES = [  # loss_variant, advantage_bias_correction, lemma1_diagnostics
    ("grpo", "eos_bound", False),
    ("eps_weight", "eos_bound", False),
    ("eps_trace", "none", True),
    ("grpo", "none", False),
]


@pytest.mark.parametrize("loss_variant,correction,diagnostics", LEMMA1_CASES)
def test_trainer_bound_equals_full_logits_reference(
    eos_heavy_trainer, monkeypatch, loss_variant, correction, diagnostics
):
    """The trainer's bound, from the policy forward of the loss (no extra forward), against full float64 logits:
    added to the advantages TRL's loss reads under `eos_bound`, logged as lemma1/… with it or with
    `lemma1_diagnostics`, and neither computed nor logged otherwise."""
    trainer, reference_model = eos_heavy_trainer
    configure(
        trainer,
        loss_variant=loss_variant,
        trace_lambda=0.0,
        trace_style="recent",
        max_completion_length=9,
        advantage_bias_correction=correction,
        lemma1_diagnostics=diagnostics,
    )
    trainer._metrics["train"].clear()
    generator = torch.Generator().manual_seed(0)
    prompt_length, length = 5, 9
    input_ids = torch.randint(3, reference_model.config.vocab_size, (3, prompt_length + length), generator=generator)
    mask = right_padded_mask([9, 4, 6], length)
    advantages = torch.tensor([0.5, -1.0, 0.0])
    batch = {
        "prompt_ids": input_ids[:, :prompt_length],
        "prompt_mask": torch.ones(3, prompt_length, dtype=torch.long),
        "completion_ids": input_ids[:, prompt_length:],
        "completion_mask": mask,
        "advantages": advantages,
        "num_items_in_batch": mask.sum().float(),
    }
    read_by_trl = {}  # the batch TRL's loss reads, after our policy forward wrote into it

    def trl_compute_loss(self, model, inputs, original=GRPOTrainer._compute_loss):
        read_by_trl.update(inputs=inputs)
        return original(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", trl_compute_loss)
    trainer._compute_loss(trainer.model, batch)
    inputs = read_by_trl["inputs"]

    attention_mask = torch.cat([batch["prompt_mask"], mask], dim=1)
    with torch.no_grad():
        logits = reference_model(input_ids=input_ids, attention_mask=attention_mask).logits
    log_softmax = torch.log_softmax(logits[:, prompt_length - 1 : -1], dim=-1)
    expected = reference_bound(log_softmax[..., trainer.processing_class.eos_token_id].exp(), mask)
    assert expected.max() > 1e-3

    read = inputs["advantages"] if inputs["advantages"].dim() == 2 else inputs["advantages"][:, None]
    if loss_variant == "eps_weight":  # λ = 0 `recent`: the weight is f(log π_t); undo it to read the bound
        read = read / (1.0 + torch.sigmoid(inputs["old_per_token_logps"] - 1.0))
    added = (read - advantages[:, None]).double() * mask
    torch.testing.assert_close(
        added, expected if correction == "eos_bound" else torch.zeros_like(expected), rtol=1e-4, atol=1e-5
    )

    metrics = trainer._metrics["train"]
    if correction == "none" and not diagnostics:
        assert not any(name.startswith("lemma1/") for name in metrics)
        return
    real = expected[mask.bool()]
    assert metrics["lemma1/bound_mean"][-1] == pytest.approx(real.mean().item(), rel=1e-4, abs=1e-6)
    assert metrics["lemma1/bound_final"][-1] == pytest.approx(expected[[0, 1, 2], [8, 3, 5]].mean().item(), rel=1e-4)
    assert metrics["lemma1/bound_at_1"][-1] == pytest.approx(expected[:, 1].mean().item(), rel=1e-4, abs=1e-6)
    assert metrics["lemma1/bound_at_8"][-1] == pytest.approx(expected[0, 8].item(), rel=1e-4, abs=1e-6)
    assert f"lemma1/bound_at_{LEMMA1_POSITIONS[-1]}" not in metrics  # no completion is that long: not logged
    assert all(math.isfinite(v) for values in metrics.values() for v in values)


def test_config_rejects_unknown_correction_and_liger(tmp_path):
    with pytest.raises(ValueError, match="advantage_bias_correction='eos'"):
        GRPOLambdaConfig(output_dir=str(tmp_path), advantage_bias_correction="eos")
    for needs, fix in [
        (dict(advantage_bias_correction="eos_bound"), "advantage_bias_correction=none"),
        (dict(lemma1_diagnostics=True), "lemma1_diagnostics=false"),
    ]:
        with pytest.raises(ValueError, match=f"Set use_liger_kernel=false or {fix}.$"):
            GRPOLambdaConfig(output_dir=str(tmp_path), use_liger_kernel=True, loss_variant="grpo", **needs)
