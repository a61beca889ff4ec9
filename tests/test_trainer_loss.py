"""The trainer's loss and gradients against TRL itself (λ = 0) and against a dense float64 reference of Alg. 1–2,
and the seam with TRL: what TRL reads from the batch, when, and that the batch it buffers is left as it was.

One TRL GRPOTrainer and one GRPOLambdaTrainer serve the whole module; each test gives them its config (`configure`).
"""

import functools
import itertools

import pytest
import torch
import trl
from trl import GRPOTrainer

from grpo_lambda.configs import parse_grpo_args
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.loss import soft_clamp_log_probs
from grpo_lambda.traces import TraceSpec
from grpo_lambda.trainer import SUPPORTED_TRL_VERSION, GRPOLambdaTrainer, check_trl_seam
from helpers import (
    MAX_COMPLETION,
    completion_logps,
    configure,
    dense_traced_sum,
    loss_and_grads,
    make_batch,
    make_trainer,
    with_reference_logps,
)

LOSS_TYPES = ["grpo", "dr_grpo", "dapo", "bnpo"]
EPSILON = 0.2


@pytest.fixture(scope="module")
def stock(tiny_model_dir, tmp_path_factory):
    return make_trainer(tiny_model_dir, tmp_path_factory.mktemp("trl"), False)


@pytest.fixture(scope="module")
def ours(tiny_model_dir, tmp_path_factory):
    return make_trainer(tiny_model_dir, tmp_path_factory.mktemp("ours"), True)


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
    trainer,
    batch,
    variant,
    loss_type,
    beta,
    trace,
    clamp=None,
    fn="sigmoid",
    epsilon_high=EPSILON,
    delta=None,
    entropy_quantile=1.0,
    importance_sampling=False,
    kl_bias_correction=False,
    off_policy_threshold=None,
):
    """Alg. 1 (eps_trace) / Alg. 2 (eps_weight) / GRPO, with the dense trace matrix and TRL's reductions, extended
    by TRL's knobs as docs/method.md ("Combinations with TRL's settings") derives: per token t,

        ℓ_t = w_t · ρ_t · m_t · −min(min(r_t, δ)·Â, clip(r_t, 1 − ε, 1 + ε_high)·Â) + β·k3_t

    r_t the ratio (traced for ε-trace), w_t = ε^w_t (ε-weight) or 1, m_t the entropy mask, ρ_t the batch's vLLM
    importance-sampling ratio ([B, T] or [B, 1]); a truncated completion masked by TRL is a row of zeros in the mask;
    `kl_bias_correction` multiplies k3 by πθ/πold and `off_policy_threshold` is TRL's off-policy sequence mask
    (ε-weight only: ε-trace refuses both)."""
    logps = completion_logps(trainer, batch)
    mask = batch["completion_mask"].to(torch.float64)
    old = batch.get("old_per_token_logps", logps.detach())
    advantages = batch["advantages"][:, None]
    if clamp is not None:
        advantages = torch.maximum(advantages, torch.tensor(clamp, dtype=advantages.dtype))
    if variant == "eps_trace":
        ratio = torch.exp(dense_traced_sum(logps - old, mask, trace))
    else:
        ratio = torch.exp(logps - old)
    unclipped = ratio if delta is None else ratio.clamp(max=delta)
    per_token = -torch.minimum(unclipped * advantages, ratio.clamp(1 - EPSILON, 1 + epsilon_high) * advantages)
    if variant == "eps_weight":
        per_token = per_token * dense_traced_sum(soft_clamp_log_probs(old, fn), mask, trace)
    if entropy_quantile < 1.0:
        per_token = per_token * entropy_mask(trainer, batch, entropy_quantile)
    if off_policy_threshold is not None:  # DeepSeek-V3.2's sequence mask: drop Â < 0 where mean log πold/πθ is large
        drift = ((old - logps.detach()) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)
        per_token = per_token * ((advantages >= 0) | (drift <= off_policy_threshold))
    if importance_sampling:
        per_token = per_token * batch["importance_sampling_ratio"]
    if beta:
        diff = batch["ref_per_token_logps"] - logps
        kl = torch.exp(diff) - diff - 1
        per_token = per_token + beta * (kl * torch.exp(logps - old) if kl_bias_correction else kl)
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
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
def test_lambda_zero_recent_is_trl_grpo(stock, ours, loss_type, beta, old_noise):
    """λ = 0 with `recent` is GRPO (§3.2): loss and gradients equal TRL's own, on- and off-policy, with and without KL."""
    configure(stock, loss_type=loss_type, beta=beta)
    configure(ours, loss_type=loss_type, beta=beta, loss_variant="eps_trace", trace_lambda=0.0, trace_style="recent")
    batch = with_reference_logps(stock, make_batch(stock.model.config.vocab_size), old_noise=old_noise)
    assert_same(*loss_and_grads(stock, batch), *loss_and_grads(ours, batch))


# Every variant × style on- and off-policy (old_noise > 0: πold ≠ πθ); each loss type, with and without KL, clamp,
# γ < 1, floor and both soft clamps somewhere.
REFERENCE_CASES = [  # variant, loss_type, β, λ, style, γ, floor, adv_clamp_min, old_noise, weight_clamp_fn
    ("eps_trace", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.0, "sigmoid"),
    ("eps_trace", "grpo", 0.0, 0.99, "recent", 1.0, 0.0, None, 0.3, "sigmoid"),
    ("eps_trace", "bnpo", 0.04, 0.98, "both", 0.95, 0.01, -0.1, 0.3, "sigmoid"),
    ("eps_trace", "dr_grpo", 0.04, 0.5, "recent", 1.0, 0.0, -0.1, 0.3, "sigmoid"),
    ("eps_trace", "dapo", 0.0, 0.99, "both", 1.0, 0.1, None, 0.0, "sigmoid"),
    ("eps_trace", "grpo", 0.0, 0.0, "both", 1.0, 0.0, None, 0.3, "sigmoid"),  # λ = 0 `both` traces the first token
    ("eps_trace", "grpo", 0.04, 1.0, "recent", 1.0, 0.0, -0.1, 0.2, "sigmoid"),
    ("eps_trace", "bnpo", 0.04, 0.99, "recent", 1.0, 0.0, -0.1, 0.0, "sigmoid"),
    ("eps_weight", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.0, "sigmoid"),
    ("eps_weight", "bnpo", 0.0, 0.98, "recent", 1.0, 0.0, None, 0.3, "sigmoid"),
    ("eps_weight", "grpo", 0.04, 0.98, "both", 0.95, 0.01, -0.1, 0.3, "tanh"),
    ("eps_weight", "dr_grpo", 0.04, 0.99, "recent", 0.9, 0.05, -0.1, 0.3, "tanh"),
    ("eps_weight", "dapo", 0.04, 0.0, "recent", 1.0, 0.0, -0.1, 0.0, "sigmoid"),
    ("grpo", "grpo", 0.04, 0.99, "both", 1.0, 0.0, -0.1, 0.3, "sigmoid"),  # plain GRPO with the advantage clamp
]


@pytest.mark.parametrize("variant,loss_type,beta,lam,style,gamma,floor,clamp,old_noise,fn", REFERENCE_CASES)
def test_loss_and_gradients_match_dense_reference(
    ours, variant, loss_type, beta, lam, style, gamma, floor, clamp, old_noise, fn
):
    configure(
        ours,
        loss_type=loss_type,
        beta=beta,
        loss_variant=variant,
        trace_lambda=lam,
        trace_style=style,
        trace_gamma=gamma,
        trace_floor=floor,
        adv_clamp_min=clamp,
        weight_clamp_fn=fn,
    )
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=3), old_noise=old_noise)
    expected = reference_loss_and_grads(
        ours,
        batch,
        variant=variant,
        loss_type=loss_type,
        beta=beta,
        trace=TraceSpec(gamma, lam, style, floor),
        clamp=clamp,
        fn=fn,
    )
    assert_same(*loss_and_grads(ours, batch), *expected, rtol=1e-6)


def entropy_mask(trainer, batch, quantile):
    """TRL's top-entropy mask (top_entropy_quantile) of the batch under the current policy: a constant."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        _, entropies, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer, trainer.model, input_ids, attention_mask, batch["completion_ids"].shape[1], compute_entropy=True
        )
    return trainer.get_high_entropy_mask(entropies, batch["completion_mask"], 1 - quantile).to(torch.float64)


def with_importance_sampling_ratio(batch, mode, seed=2):
    """The vLLM importance-sampling ratio TRL's generation step adds in `mode`: π_old/π_vLLM per token or per
    sequence (sum of log-ratios), truncated at 3 or masked to 0 outside [0, 3] (TRL's clip_max), 0 on padding."""
    generator = torch.Generator().manual_seed(seed)
    mask = batch["completion_mask"]
    old = batch["old_per_token_logps"]
    sampling = old + 0.4 * torch.randn(old.shape, generator=generator, dtype=old.dtype)
    log_ratio = (old - sampling) * mask
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdim=True)
    ratio = log_ratio.exp()
    ratio = ratio.clamp(max=3.0) if mode.endswith("truncate") else ratio.masked_fill(ratio > 3.0, 0.0)
    return dict(batch, importance_sampling_ratio=ratio)


def with_a_truncated_completion(batch):
    """mask_truncated_completions: TRL's generation step zeroes the mask of a completion that hit the length limit."""
    mask = batch["completion_mask"].clone()
    mask[0] = 0
    return dict(batch, completion_mask=mask)


# docs/method.md, "Combinations with TRL's settings": each row that says "exact" is a case here, for both variants.
KNOB_CASES = {  # name: (config fields, reference arguments, batch transform, πold noise)
    "epsilon_high": (dict(epsilon_high=0.28, loss_type="dapo"), dict(epsilon_high=0.28), None, 0.3),
    "delta": (dict(delta=1.2, loss_type="bnpo"), dict(delta=1.2), None, 0.3),
    "mask_truncated_completions": (
        dict(mask_truncated_completions=True, loss_type="grpo"),
        {},
        with_a_truncated_completion,
        0.0,  # on-policy: the elementwise form with an empty row
    ),
    "top_entropy_quantile": (
        dict(top_entropy_quantile=0.5, loss_type="grpo"),
        dict(entropy_quantile=0.5),
        None,
        0.0,
    ),
    "num_iterations": (dict(num_iterations=2, loss_type="bnpo"), {}, None, 0.3),
    **{
        f"vllm-{mode}": (
            dict(vllm_importance_sampling_correction=True, vllm_importance_sampling_mode=mode, loss_type=loss_type),
            dict(importance_sampling=True),
            functools.partial(with_importance_sampling_ratio, mode=mode),
            0.1,
        )
        for mode, loss_type in [
            ("token_truncate", "grpo"),
            ("token_mask", "dapo"),
            ("sequence_truncate", "bnpo"),
            ("sequence_mask", "dr_grpo"),
        ]
    },
}


KNOB_CASES_EPS_WEIGHT = {  # ε-trace refuses these (configs.py)
    "off_policy_mask_threshold": (
        dict(off_policy_mask_threshold=-0.205, loss_type="bnpo"),  # drops row 2 (drift −0.204) only
        dict(off_policy_threshold=-0.205),
        None,
        0.3,
    ),
    "use_bias_correction_kl": (
        dict(use_bias_correction_kl=True, loss_type="grpo"),
        dict(kl_bias_correction=True),
        None,
        0.3,
    ),
}


@pytest.mark.parametrize(
    "case,variant",
    [(case, variant) for case in KNOB_CASES for variant in ("eps_trace", "eps_weight")]
    + [(case, "eps_weight") for case in KNOB_CASES_EPS_WEIGHT],
)
def test_trl_knobs_match_the_extended_reference(ours, monkeypatch, case, variant):
    fields, knobs, transform, old_noise = {**KNOB_CASES, **KNOB_CASES_EPS_WEIGHT}[case]
    trace = TraceSpec(1.0, 0.99, "both")
    configure(
        ours, beta=0.04, adv_clamp_min=-0.1, loss_variant=variant, trace_lambda=0.99, trace_style="both", **fields
    )
    if "importance_sampling" in knobs:  # the loss applies the ratio only with vLLM on, which this bench leaves off
        monkeypatch.setattr(ours, "use_vllm", True)
        monkeypatch.setattr(ours, "vllm_importance_sampling_correction", True)
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=17), old_noise=old_noise)
    batch["advantages"] = batch["advantages"] * torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    batch = transform(batch) if transform else batch
    expected = reference_loss_and_grads(
        ours, batch, variant=variant, loss_type=fields["loss_type"], beta=0.04, trace=trace, clamp=-0.1, **knobs
    )
    assert_same(*loss_and_grads(ours, batch), *expected, rtol=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo"])
def test_on_policy_gradient_is_theorem_1(ours, loss_type):
    """On-policy the ε-trace gradient is −Σ_t c_t δ_t Σ_l (γλ)^l ∇log π(a_{t−l}) (Theorem 1, Eq. 12), where c_t is
    the loss type's per-token normaliser; written here as an explicit double loop."""
    gamma, lam = 0.95, 0.9
    configure(
        ours, loss_type=loss_type, loss_variant="eps_trace", trace_lambda=lam, trace_gamma=gamma, trace_style="recent"
    )
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
    ours.model.zero_grad()


def test_off_policy_clips_the_traced_ratio(ours):
    """num_iterations > 1: the ratio that is clipped (and counted as clipped) is exp(Σ_l tr(t,l)·Δ_{t−l})."""
    configure(ours, loss_variant="eps_trace", trace_lambda=0.99, trace_style="both", num_iterations=2)
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=7), old_noise=0.05)
    ours._compute_loss(ours.model, dict(batch))
    logged = ours._metrics["train"]["clip_ratio/region_mean"][-1]

    with torch.no_grad():
        logps = completion_logps(ours, batch)
    mask = batch["completion_mask"].to(torch.float64)
    advantages = batch["advantages"][:, None]
    delta = logps - batch["old_per_token_logps"]

    def clipped_fraction(log_ratio):
        ratio = torch.exp(log_ratio)
        clipped = ((ratio < 1 - EPSILON) & (advantages < 0)) | ((ratio > 1 + EPSILON) & (advantages > 0))
        return ((clipped * mask).sum() / mask.sum()).item()

    traced = clipped_fraction(dense_traced_sum(delta, mask, TraceSpec(1.0, 0.99, "both")))
    untraced = clipped_fraction(delta)
    assert logged == pytest.approx(traced)
    assert traced != pytest.approx(untraced)  # the noise is small per token but adds up along the trace


@pytest.mark.parametrize("variant", ["eps_trace", "eps_weight"])
def test_padding_changes_neither_loss_nor_gradients(ours, variant):
    configure(ours, loss_variant=variant, trace_style="both", beta=0.04)
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=9), old_noise=0.2)
    padded = dict(batch)
    extra = 4
    generator = torch.Generator().manual_seed(9)
    padded["completion_ids"] = torch.cat([batch["completion_ids"], torch.full((4, extra), 7)], dim=1)
    padded["completion_mask"] = torch.cat([batch["completion_mask"], torch.zeros(4, extra, dtype=torch.long)], dim=1)
    for key in ("ref_per_token_logps", "old_per_token_logps"):
        noise = torch.randn(4, extra, dtype=torch.float64, generator=generator)
        padded[key] = torch.cat([batch[key], noise.to(batch[key].dtype)], dim=1)
    assert_same(*loss_and_grads(ours, batch), *loss_and_grads(ours, padded), rtol=1e-6)


def test_trace_metrics_are_logged(ours):
    for variant, name in [("eps_trace", "trace/log_ratio_abs_mean"), ("eps_weight", "trace/eps_weight_mean")]:
        configure(ours, loss_variant=variant, trace_lambda=0.99)
        ours._metrics["train"].clear()
        loss_and_grads(ours, make_batch(ours.model.config.vocab_size))
        metrics = ours._metrics["train"]
        assert name in metrics and "trace/credit_weight_mean" in metrics
        # c_k averaged over tokens: > 1 once tokens credit earlier ones
        assert metrics["trace/credit_weight_mean"][-1] > 1.0
        if variant == "eps_weight":  # ε^w itself (sums of 1 + σ(·) ≥ 1), logged before it becomes Â·ε^w in place
            assert metrics[name][-1] >= 1.0
        else:  # on-policy: the traced ratio is exactly 1
            assert metrics[name][-1] == 0.0 and metrics["trace/ratio_mean"][-1] == 1.0
        assert not any(key.startswith("lemma1/") for key in metrics)  # opt-in (lemma1_diagnostics)
        assert all(torch.isfinite(torch.tensor(v)).all() for v in metrics.values())


def test_max_prompt_length_keeps_the_last_tokens(ours):
    """Table 2's max prompt length (256) as the paper's TRL applied it: left truncation of the prompt ids."""
    prompts = [[{"role": "user", "content": "Ava has 3 apples and gets 4 more. How many apples does Ava have now?"}]]
    full = configure(ours)._tokenize_prompts(prompts)[0][0]
    cut = configure(ours, max_prompt_length=6)._tokenize_prompts(prompts)[0][0]
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
def test_on_policy_fast_path_is_the_general_path(ours, loss_type, beta, style, lam, floor, clamp):
    """TRL leaves `old_per_token_logps` out on-policy and the trainer takes the elementwise form; handing it the
    same log-probabilities as `old_per_token_logps` takes the traced-sum path. Same loss value (bit for bit), same
    gradients to float32 rounding: TRL's log-probabilities are float32, which the two paths round differently."""
    configure(
        ours,
        loss_type=loss_type,
        beta=beta,
        loss_variant="eps_trace",
        trace_lambda=lam,
        trace_style=style,
        trace_floor=floor,
        adv_clamp_min=clamp,
    )
    batch = with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=11))
    with torch.no_grad():
        general = dict(batch, old_per_token_logps=completion_logps(ours, batch))
    assert ours._on_policy_fast_path(batch) and not ours._on_policy_fast_path(general)
    fast_loss, fast_grads = loss_and_grads(ours, batch)
    general_loss, general_grads = loss_and_grads(ours, general)
    assert torch.equal(fast_loss, general_loss)
    assert_same(fast_loss, fast_grads, general_loss, general_grads, rtol=1e-6)


def test_per_token_loss_factors_take_the_general_path(ours):
    """An entropy mask weighs tokens unequally within a sequence, so the elementwise form would be wrong there."""
    configure(ours, loss_variant="eps_trace", top_entropy_quantile=0.5)
    batch = make_batch(ours.model.config.vocab_size)
    assert not ours._on_policy_fast_path(batch)


# The seam with TRL (trainer.py's module docstring).

AFTER_THE_FORWARD = ("advantages", "old_per_token_logps", "ref_per_token_logps")


class ReadLog(dict):
    """A batch that appends each key read to `self.events`; `copy.copy` keeps the class and shares the list."""

    def __getitem__(self, key):
        self.events.append(("read", key))
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.events.append(("read", key))
        return super().get(key, default)

    def __contains__(self, key):
        self.events.append(("read", key))
        return super().__contains__(key)


SEAM_CASES = {  # config, πold ≠ πθ (off-policy)
    "eps_weight": (dict(loss_variant="eps_weight", trace_style="both"), 0.1),
    "eps_trace-off-policy": (dict(loss_variant="eps_trace", trace_style="both"), 0.1),
    "eps_trace-on-policy": (dict(loss_variant="eps_trace", trace_style="recent"), 0.0),
    "grpo-eos_bound": (dict(loss_variant="grpo", advantage_bias_correction="eos_bound"), 0.0),
    "eps_weight-eos_bound": (dict(loss_variant="eps_weight", advantage_bias_correction="eos_bound"), 0.1),
}


@pytest.mark.parametrize("case", SEAM_CASES)
def test_trl_reads_the_batch_after_the_one_policy_forward_and_never_modifies_it(ours, monkeypatch, case):
    """TRL's _compute_loss runs the policy forward once and reads advantages, old and reference log-probabilities only
    after it (so that what the forward writes is what TRL's loss uses); the batch TRL buffers for num_iterations is
    left as it was (same keys, same tensor objects, no in-place write), so a second loss on it is the same."""
    fields, old_noise = SEAM_CASES[case]
    configure(ours, beta=0.04, adv_clamp_min=-0.1, **fields)
    batch = ReadLog(with_reference_logps(ours, make_batch(ours.model.config.vocab_size, seed=13), old_noise=old_noise))
    events = batch.events = []
    snapshot = {key: (value, value.clone(), value._version) for key, value in batch.items()}

    def trl_compute_loss(self, model, inputs, original=GRPOTrainer._compute_loss):
        events.append(("trl", "_compute_loss"))
        return original(self, model, inputs)

    def policy_forward(self, *args, original=GRPOLambdaTrainer._get_per_token_logps_and_entropies, **kwargs):
        events.append(("forward", "begins"))
        result = original(self, *args, **kwargs)
        events.append(("forward", "ends"))
        return result

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", trl_compute_loss)
    monkeypatch.setattr(GRPOLambdaTrainer, "_get_per_token_logps_and_entropies", policy_forward)
    first = ours._compute_loss(ours.model, batch)
    assert events.count(("forward", "begins")) == 1 and events.count(("forward", "ends")) == 1
    trl_begins, begins, ends = (
        events.index(e) for e in [("trl", "_compute_loss"), ("forward", "begins"), ("forward", "ends")]
    )
    read_by_trl_before = {key for kind, key in events[trl_begins:begins] if kind == "read"}
    read_by_trl_after = {key for kind, key in events[ends:] if kind == "read"}
    assert not read_by_trl_before & set(AFTER_THE_FORWARD)
    assert set(AFTER_THE_FORWARD) <= read_by_trl_after

    assert batch.keys() == snapshot.keys()
    for key, (tensor, values, version) in snapshot.items():
        assert batch[key] is tensor and tensor._version == version and torch.equal(tensor, values), key
    assert torch.equal(ours._compute_loss(ours.model, batch), first)


def test_a_loss_without_exactly_one_policy_forward_is_refused(ours, monkeypatch):
    configure(ours, loss_variant="eps_trace")
    batch = make_batch(ours.model.config.vocab_size)
    original = GRPOTrainer._compute_loss

    def twice(self, model, inputs):
        original(self, model, inputs)
        return original(self, model, inputs)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", twice)
    with pytest.raises(RuntimeError, match=f"second policy forward.*trl=={SUPPORTED_TRL_VERSION}"):
        ours._compute_loss(ours.model, batch)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", lambda self, model, inputs: torch.zeros(()))
    with pytest.raises(RuntimeError, match="ran 0 policy forwards"):
        ours._compute_loss(ours.model, batch)


def test_trl_version_and_signatures_are_checked_at_start_up(monkeypatch, tmp_path):
    check_trl_seam()
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", lambda self, inputs, model: None)
    with pytest.raises(ImportError, match=rf"trl=={SUPPORTED_TRL_VERSION} only; its GRPOTrainer._compute_loss"):
        check_trl_seam()
    monkeypatch.undo()
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    with pytest.raises(GRPOLambdaError) as raised:  # the config checks it first, before any model loads
        parse_grpo_args(["--output_dir", str(tmp_path)])
    message = str(raised.value)
    assert "\n" not in message and f"pip install trl=={SUPPORTED_TRL_VERSION}" in message and "1.17.0" in message
