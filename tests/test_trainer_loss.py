"""The trainer's loss and gradients against TRL itself (λ = 0) and against a dense float64 reference of Alg. 1–2."""

import itertools

import pytest
import torch

from grpo_lambda.loss import soft_clamp_log_probs
from grpo_lambda.traces import trace_matrix
from trainer_utils import (
    MAX_COMPLETION,
    completion_logps,
    loss_and_grads,
    make_batch,
    make_trainer,
    with_reference_logps,
)

LOSS_TYPES = ["grpo", "dr_grpo", "dapo", "bnpo"]
EPSILON = 0.2


def assert_same(loss_a, grads_a, loss_b, grads_b, rtol=1e-9):
    """Equal loss and gradients. The model runs in float64 but TRL's fused LM head returns float32 log-probs, so a
    float64 reference built from them agrees to float32 rounding (rtol 1e-6) and TRL against TRL to 1e-9; the KL
    path of ε-trace adds and removes the traced shift, which leaves ~1e-8 of the largest gradient entry."""
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=1e-12)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        scale = grads_b[name].abs().max().item()
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=max(rtol, 1e-7), atol=max(rtol, 1e-7) * scale)


def reference_loss(
    trainer, batch, variant, loss_type, beta, lam=0.0, style="recent", gamma=1.0, floor=0.0, clamp=None
):
    """Alg. 1 (eps_trace) / Alg. 2 (eps_weight) / GRPO, with the dense trace matrix and TRL's reductions."""
    logps = completion_logps(trainer, batch)
    mask = batch["completion_mask"].to(torch.float64)
    old = batch.get("old_per_token_logps", logps.detach())
    advantages = batch["advantages"][:, None]
    if clamp is not None:
        advantages = torch.maximum(advantages, torch.tensor(clamp, dtype=advantages.dtype))
    matrix = trace_matrix(logps.shape[1], gamma, lam, style, floor)
    if variant == "eps_trace":
        ratio = torch.exp(((logps - old) * mask) @ matrix.T)
    else:
        ratio = torch.exp(logps - old)
    per_token = -torch.minimum(ratio * advantages, ratio.clamp(1 - EPSILON, 1 + EPSILON) * advantages)
    if variant == "eps_weight":
        per_token = per_token * ((soft_clamp_log_probs(old) * mask) @ matrix.T)
    if beta:
        diff = batch["ref_per_token_logps"] - logps
        per_token = per_token + beta * (torch.exp(diff) - diff - 1)
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum()
    if loss_type == "dr_grpo":
        return masked.sum() / (mask.shape[0] * MAX_COMPLETION)
    return masked.sum() / batch["num_items_in_batch"]  # dapo, one process, one accumulation step


def reference_loss_and_grads(trainer, batch, **kwargs):
    trainer.model.zero_grad()
    loss = reference_loss(trainer, batch, **kwargs)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("loss_type,beta,old_noise", list(itertools.product(LOSS_TYPES, [0.0, 0.04], [0.0, 0.3])))
def test_lambda_zero_recent_is_trl_grpo(tiny_model_dir, tmp_path, loss_type, beta, old_noise):
    stock = make_trainer(tiny_model_dir, tmp_path / "trl", False, loss_type=loss_type, beta=beta)
    ours = make_trainer(
        tiny_model_dir, tmp_path / "ours", True, loss_type=loss_type, beta=beta,
        loss_variant="eps_trace", trace_lambda=0.0, trace_style="recent",
    )  # fmt: skip
    batch = with_reference_logps(stock, make_batch(stock.model.config.vocab_size), old_noise=old_noise)
    assert_same(*loss_and_grads(stock, batch), *loss_and_grads(ours, batch))


REFERENCE_CASES = [
    ("eps_trace", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.0),
    ("eps_trace", "grpo", 0.0, 0.99, "recent", 1.0, 0.0, None, 0.3),
    ("eps_trace", "bnpo", 0.04, 0.98, "both", 0.95, 0.01, -0.1, 0.3),
    ("eps_trace", "dr_grpo", 0.04, 0.5, "recent", 1.0, 0.0, -0.1, 0.3),
    ("eps_trace", "dapo", 0.0, 0.99, "both", 1.0, 0.1, None, 0.0),
    ("eps_trace", "grpo", 0.0, 0.0, "both", 1.0, 0.0, None, 0.3),  # λ = 0 `both` still traces the first token
    ("eps_trace", "grpo", 0.04, 1.0, "recent", 1.0, 0.0, -0.1, 0.2),
    ("eps_weight", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.0),
    ("eps_weight", "bnpo", 0.0, 0.98, "recent", 1.0, 0.0, None, 0.3),
    ("eps_weight", "dr_grpo", 0.04, 0.99, "recent", 0.9, 0.05, -0.1, 0.3),
    ("eps_weight", "dapo", 0.04, 0.0, "recent", 1.0, 0.0, -0.1, 0.0),
    ("grpo", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.3),  # plain GRPO with the advantage clamp
]


@pytest.mark.parametrize("variant,loss_type,beta,lam,style,gamma,floor,clamp,old_noise", REFERENCE_CASES)
def test_loss_and_gradients_match_dense_reference(
    tiny_model_dir, tmp_path, variant, loss_type, beta, lam, style, gamma, floor, clamp, old_noise
):
    trace = dict(lam=lam, style=style, gamma=gamma, floor=floor)
    ours = make_trainer(
        tiny_model_dir, tmp_path, True, loss_type=loss_type, beta=beta, loss_variant=variant, trace_lambda=lam,
        trace_style=style, trace_gamma=gamma, trace_floor=floor, adv_clamp_min=clamp,
    )  # fmt: skip
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=3), old_noise=old_noise)
    expected = reference_loss_and_grads(
        ours, batch, variant=variant, loss_type=loss_type, beta=beta, clamp=clamp, **trace
    )
    assert_same(*loss_and_grads(ours, batch), *expected, rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_on_policy_gradient_is_theorem_1(tiny_model_dir, tmp_path, loss_type):
    """On-policy the ε-trace gradient is −Σ_t c_t δ_t Σ_l (γλ)^l ∇log π(a_{t−l}) (Theorem 1, Eq. 12), where c_t is
    the loss type's per-token normaliser; written here as an explicit double loop."""
    gamma, lam = 0.95, 0.9
    ours = make_trainer(
        tiny_model_dir, tmp_path, True, loss_type=loss_type, loss_variant="eps_trace", trace_lambda=lam,
        trace_gamma=gamma, trace_style="recent",
    )  # fmt: skip
    batch = make_batch(ours.model.config.vocab_size, seed=5)
    _, grads = loss_and_grads(ours, batch)

    ours.model.zero_grad()
    logps = completion_logps(ours, batch)
    mask = batch["completion_mask"]
    objective = 0.0
    for i in range(logps.shape[0]):
        length = int(mask[i].sum())
        norm = length * logps.shape[0] if loss_type == "grpo" else int(mask.sum())
        for t in range(length):
            trace = sum((gamma * lam) ** lag * logps[i, t - lag] for lag in range(t + 1))
            objective = objective + batch["advantages"][i] * trace / norm
    (-objective).backward()
    for name, p in ours.model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-6, atol=1e-6 * p.grad.abs().max().item())


def test_off_policy_clips_the_traced_ratio(tiny_model_dir, tmp_path):
    """num_iterations > 1: the ratio that is clipped (and counted as clipped) is exp(Σ_l tr(t,l)·Δ_{t−l})."""
    ours = make_trainer(
        tiny_model_dir, tmp_path, True, loss_variant="eps_trace", trace_lambda=0.99, trace_style="both",
        num_iterations=2,
    )  # fmt: skip
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=7), old_noise=0.05)
    ours._compute_loss(ours.model, dict(batch))
    logged = ours._metrics["train"]["clip_ratio/region_mean"][-1]

    with torch.no_grad():
        logps = completion_logps(ours, batch)
    mask = batch["completion_mask"].to(torch.float64)
    advantages = batch["advantages"][:, None]
    delta = (logps - batch["old_per_token_logps"]) * mask

    def clipped_fraction(log_ratio):
        ratio = torch.exp(log_ratio)
        clipped = ((ratio < 1 - EPSILON) & (advantages < 0)) | ((ratio > 1 + EPSILON) & (advantages > 0))
        return ((clipped * mask).sum() / mask.sum()).item()

    traced = clipped_fraction(delta @ trace_matrix(delta.shape[1], 1.0, 0.99, "both").T)
    untraced = clipped_fraction(delta)
    assert logged == pytest.approx(traced)
    assert traced != pytest.approx(untraced)  # the noise is small per token but adds up along the trace


@pytest.mark.parametrize("variant", ["eps_trace", "eps_weight"])
def test_padding_changes_neither_loss_nor_gradients(tiny_model_dir, tmp_path, variant):
    ours = make_trainer(tiny_model_dir, tmp_path, True, loss_variant=variant, trace_style="both", beta=0.04)
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=9), old_noise=0.2)
    padded = dict(batch)
    extra = 4
    padded["completion_ids"] = torch.cat([batch["completion_ids"], torch.full((4, extra), 7)], dim=1)
    padded["completion_mask"] = torch.cat([batch["completion_mask"], torch.zeros(4, extra, dtype=torch.long)], dim=1)
    for key in ("ref_per_token_logps", "old_per_token_logps"):
        padded[key] = torch.cat([batch[key], torch.randn(4, extra, dtype=torch.float64)], dim=1)
    assert_same(*loss_and_grads(ours, batch), *loss_and_grads(ours, padded), rtol=1e-6)


def test_the_buffered_batch_is_not_modified(tiny_model_dir, tmp_path):
    """TRL reuses a generation batch over num_iterations: the loss must leave it as it found it."""
    ours = make_trainer(tiny_model_dir, tmp_path, True, loss_variant="eps_weight", beta=0.04, adv_clamp_min=-0.1)
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size), old_noise=0.1)
    snapshot = {key: value.clone() for key, value in batch.items()}
    ours._compute_loss(ours.model, batch)
    assert batch.keys() == snapshot.keys()
    for key in batch:
        assert torch.equal(batch[key], snapshot[key]), key


def test_trace_metrics_are_logged(tiny_model_dir, tmp_path):
    for variant, name in [("eps_trace", "trace/log_ratio_abs_mean"), ("eps_weight", "trace/eps_weight_mean")]:
        ours = make_trainer(tiny_model_dir, tmp_path / variant, True, loss_variant=variant, trace_lambda=0.99)
        loss_and_grads(ours, make_batch(ours.model.config.vocab_size))
        metrics = ours._metrics["train"]
        assert name in metrics and "trace/credit_weight_mean" in metrics
        # c_k averaged over tokens: > 1 once tokens credit earlier ones
        assert metrics["trace/credit_weight_mean"][-1] > 1.0
        if variant == "eps_weight":  # ε^w itself (sums of 1 + σ(·) ≥ 1), logged before it becomes Â·ε^w in place
            assert metrics[name][-1] >= 1.0
        assert all(torch.isfinite(torch.tensor(v)).all() for v in metrics.values())


def test_max_prompt_length_keeps_the_last_tokens(tiny_model_dir, tmp_path):
    """Table 2's max prompt length (256) as the paper's TRL applied it: left truncation of the prompt ids."""
    prompts = [[{"role": "user", "content": "Ava has 3 apples and gets 4 more. How many apples does Ava have now?"}]]
    full = make_trainer(tiny_model_dir, tmp_path / "full", True)._tokenize_prompts(prompts)[0][0]
    cut = make_trainer(tiny_model_dir, tmp_path / "cut", True, max_prompt_length=6)._tokenize_prompts(prompts)[0][0]
    assert len(full) > 6 and list(cut) == list(full[-6:])


@pytest.mark.parametrize(
    "loss_type,beta,style,lam,floor,clamp",
    [
        ("grpo", 0.04, "both", 0.99, 0.0, -0.1),
        ("bnpo", 0.0, "recent", 0.98, 0.01, None),
        ("dr_grpo", 0.04, "recent", 1.0, 0.0, -0.1),
        ("dapo", 0.04, "both", 0.5, 0.1, None),
    ],
)
def test_on_policy_fast_path_is_the_general_path(tiny_model_dir, tmp_path, loss_type, beta, style, lam, floor, clamp):
    """TRL leaves `old_per_token_logps` out on-policy and the trainer takes the elementwise form; handing it the
    same log-probabilities as `old_per_token_logps` takes the traced-sum path. Same loss value (bit for bit), same
    gradients to float32 rounding: TRL's log-probabilities are float32, which the two paths round differently."""
    ours = make_trainer(
        tiny_model_dir, tmp_path, True, loss_type=loss_type, beta=beta, loss_variant="eps_trace", trace_lambda=lam,
        trace_style=style, trace_floor=floor, adv_clamp_min=clamp,
    )  # fmt: skip
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=11))
    with torch.no_grad():
        general = dict(batch, old_per_token_logps=completion_logps(ours, batch))
    assert ours._on_policy_fast_path(batch) and not ours._on_policy_fast_path(general)
    fast_loss, fast_grads = loss_and_grads(ours, batch)
    general_loss, general_grads = loss_and_grads(ours, general)
    assert torch.equal(fast_loss, general_loss)
    assert_same(fast_loss, fast_grads, general_loss, general_grads, rtol=1e-6)


def test_per_token_loss_factors_take_the_general_path(tiny_model_dir, tmp_path):
    """An entropy mask weighs tokens unequally within a sequence, so the elementwise form would be wrong there."""
    ours = make_trainer(tiny_model_dir, tmp_path, True, loss_variant="eps_trace", top_entropy_quantile=0.5)
    batch = make_batch(ours.model.config.vocab_size)
    assert not ours._on_policy_fast_path(batch)
