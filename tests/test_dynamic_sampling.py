"""Dynamic sampling (grpo_lambda.dynamic_sampling and GRPOLambdaTrainer._dynamically_sampled_batch): the groups it
keeps, the prompts of its extra rounds, the batch it builds against the batch TRL builds from the kept groups alone
(loss and gradient), the cap, and real runs on 1 and 2 processes, with vLLM colocated, and resumed."""

import logging

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer.utils import nanstd, pad

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.dynamic_sampling import (
    extra_prompt_indices,
    groups_with_reward_variance,
    select_groups,
    stack_groups,
    trim_padding,
)
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.trainer import GRPOLambdaTrainer
from helpers import loss_and_grads
from test_configs import write_recipe

GENERATIONS = 4


def test_kept_groups_are_those_trl_counts_as_having_reward_variance():
    """TRL's `frac_reward_zero_std` criterion: isclose(nanstd(group), 0); equal rewards that are not exact in
    binary (0.1 · 8 summed) still count as equal, and a group with under two scorable rewards has no variance."""
    nan = float("nan")
    rewards = torch.tensor(
        [
            [0.1] * 4,
            [1.0, 1.0, 1.0, 0.0],
            [0.0] * 4,
            [nan, nan, nan, nan],
            [nan, 1.0, nan, nan],
            [nan, 1.0, 0.0, nan],
            [0.3, 0.3 + 1e-12, 0.3, 0.3],
            [0.5, 0.25, 0.5, 0.5],
        ]
    )
    keep = groups_with_reward_variance(rewards.flatten(), GENERATIONS)
    assert keep.tolist() == [False, True, False, False, False, True, False, True]
    trl_std = nanstd(rewards, dim=1)
    trl_zero = torch.isclose(trl_std, torch.zeros_like(trl_std))
    scorable = ~torch.isnan(trl_std)
    assert torch.equal(keep[scorable], ~trl_zero[scorable])


def test_extra_prompts_depend_on_seed_step_and_round_only_and_repeat_no_prompt_within_a_pass():
    draw = [extra_prompt_indices(10, 3, step, r, max_rounds=3, seed=7) for step in range(2) for r in (1, 2)]
    assert [extra_prompt_indices(10, 3, step, r, 3, 7) for step in range(2) for r in (1, 2)] == draw
    flat = [i for indices in draw for i in indices]  # 12 draws: pass 0 (10 prompts) then 2 of pass 1
    assert sorted(flat[:10]) == list(range(10)) and len(set(flat[10:])) == 2
    assert extra_prompt_indices(10, 3, 0, 1, 3, seed=8) != draw[0]
    with pytest.raises(ValueError):
        extra_prompt_indices(10, 3, 0, 3, 3, 7)


def test_select_groups_takes_the_first_kept_groups_then_fills_with_dropped_ones():
    keep = [torch.tensor([False, True, False]), torch.tensor([True, True, False])]
    assert select_groups(keep, 2).groups == ((0, 1), (1, 0))
    selection = select_groups(keep, 5)
    assert selection.groups == ((0, 1), (1, 0), (1, 1), (0, 0), (0, 2)) and (selection.kept, selection.filled) == (
        3,
        2,
    )


def trl_batch(rows, pad_to_multiple_of=None):
    """What TRL's generation step makes of rows (prompt ids, completion ids, a per-token value, an advantage): prompts
    left-padded, completions right-padded (trl.trainer.utils.pad), the loss tokens counted."""
    prompts = [torch.tensor(r[0]) for r in rows]
    completions = [torch.tensor(r[1]) for r in rows]
    values = [torch.tensor(r[2], dtype=torch.float64) for r in rows]
    batch = {
        "prompt_ids": pad(prompts, padding_value=PAD, padding_side="left", pad_to_multiple_of=pad_to_multiple_of),
        "prompt_mask": pad(
            [torch.ones_like(p) for p in prompts],
            padding_value=0,
            padding_side="left",
            pad_to_multiple_of=pad_to_multiple_of,
        ),
        "completion_ids": pad(completions, padding_value=PAD, pad_to_multiple_of=pad_to_multiple_of),
        "completion_mask": pad(
            [torch.ones_like(c) for c in completions], padding_value=0, pad_to_multiple_of=pad_to_multiple_of
        ),
        "old_per_token_logps": pad(values, padding_value=0.0, pad_to_multiple_of=pad_to_multiple_of),
        "advantages": torch.tensor([r[3] for r in rows], dtype=torch.float64),
    }
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return batch


PAD = 0


@pytest.mark.parametrize("pad_to_multiple_of", [None, 4])
def test_stacked_groups_are_padded_as_trl_pads_them_alone(pad_to_multiple_of):
    generator = torch.Generator().manual_seed(0)

    def random_rows(count, longest):
        lengths = torch.randint(1, longest + 1, (count, 2), generator=generator).tolist()
        return [
            (
                torch.randint(1, 50, (p,), generator=generator).tolist(),
                torch.randint(1, 50, (c,), generator=generator).tolist(),
                torch.randn(c, generator=generator, dtype=torch.float64).tolist(),
                float(i),
            )
            for i, (p, c) in enumerate(lengths)
        ]

    rounds = [random_rows(3 * GENERATIONS, 9), random_rows(3 * GENERATIONS, 5)]
    selection = select_groups([torch.tensor([False, True, False]), torch.tensor([True, False, True])], 3)
    stacked = stack_groups(
        [trl_batch(r, pad_to_multiple_of) for r in rounds], selection, GENERATIONS, PAD, sequence_level_ratio=False
    )
    batch = trim_padding(stacked, pad_to_multiple_of, sequence_level_ratio=False)
    chosen = [row for r, g in selection.groups for row in rounds[r][g * GENERATIONS : (g + 1) * GENERATIONS]]
    expected = trl_batch(chosen, pad_to_multiple_of)
    assert batch.keys() == expected.keys()
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key


class PositionReward:
    """0 for every completion of a prompt that says "flat" (a zero-variance group); otherwise the completion's place
    in its group (0 … G − 1), so that even identical (greedy) completions give a group with variance."""

    __name__ = "position_reward"

    def __call__(self, prompts, completions, **kwargs):
        return [0.0 if "flat" in prompt else float(i % GENERATIONS) for i, prompt in enumerate(prompts)]


PROMPTS = ["flat: 1 + 1 =", "vary: 2 + 2 =", "vary: 3 + 3 =", "flat: 4 + 4 =", "vary: 5 + 5 =", "vary: 6 + 6 ="]


@pytest.fixture(scope="module")
def greedy(tiny_model_dir, tmp_path_factory):
    """GRPO-λ on the tiny model in float64, greedy generation (so that two batches of the same prompts hold the same
    completions), 2 groups of 4 per step, DAPO's token-level loss (its normaliser counts the whole batch's tokens)."""
    args = GRPOLambdaConfig(
        output_dir=str(tmp_path_factory.mktemp("dynamic")),
        per_device_train_batch_size=2 * GENERATIONS,
        num_generations=GENERATIONS,
        max_completion_length=6,
        generation_kwargs={"do_sample": False},
        use_cpu=True,
        bf16=False,
        report_to="none",
        beta=0.04,
        loss_type="dapo",
        use_bias_correction_kl=False,
        loss_variant="eps_trace",
        trace_style="both",
        adv_clamp_min=-0.1,
        dynamic_sampling=True,
        dynamic_sampling_max_rounds=3,
        seed=3,
    )
    trainer = GRPOLambdaTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64),
        reward_funcs=PositionReward(),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def rows(*indices):
    return [{"prompt": PROMPTS[i]} for i in indices for _ in range(GENERATIONS)]


def plain_batch(trainer, inputs):
    trainer.args.dynamic_sampling = False
    try:
        return trainer._generate_and_score_completions(inputs)
    finally:
        trainer.args.dynamic_sampling = True


def test_the_batch_is_the_one_trl_builds_from_the_kept_groups_alone(greedy):
    """Round 0 holds a flat group and a varying one; the extra round's prompts (extra_prompt_indices) supply the
    second varying group. The batch equals TRL's batch of those two groups generated together: same rows, same
    advantages, same reference log-probabilities, and num_items_in_batch counts their tokens only, so DAPO's loss
    and its gradient are the same."""
    greedy._metrics["train"].clear()
    dynamic = greedy._generate_and_score_completions(rows(0, 1))
    drawn = extra_prompt_indices(len(PROMPTS), 2, 0, 1, max_rounds=3, seed=3)
    second = next(i for i in drawn if "vary" in PROMPTS[i])
    direct = plain_batch(greedy, rows(1, second))

    assert dynamic.keys() == direct.keys()
    for key in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "num_items_in_batch"):
        assert torch.equal(dynamic[key], direct[key]), key
    torch.testing.assert_close(dynamic["ref_per_token_logps"], direct["ref_per_token_logps"], rtol=0, atol=1e-6)
    torch.testing.assert_close(*loss_and_grads(greedy, dynamic)[:1], *loss_and_grads(greedy, direct)[:1])
    dynamic_grads, direct_grads = loss_and_grads(greedy, dynamic)[1], loss_and_grads(greedy, direct)[1]
    for name in direct_grads:
        torch.testing.assert_close(dynamic_grads[name], direct_grads[name], rtol=1e-6, atol=1e-9)

    metrics = {name: values[-1] for name, values in greedy._metrics["train"].items() if name.startswith("dynamic")}
    kept_in_round_1 = sum("vary" in PROMPTS[i] for i in drawn)
    assert metrics["dynamic_sampling/rounds"] == 2 and metrics["dynamic_sampling/groups_generated"] == 4
    assert metrics["dynamic_sampling/groups_kept"] == 1 + kept_in_round_1
    assert metrics["dynamic_sampling/groups_filled"] == 0
    assert 0 < metrics["dynamic_sampling/extra_generated_tokens"] < metrics["dynamic_sampling/generated_tokens"]


def test_a_batch_whose_groups_all_vary_is_trls_own(greedy):
    dynamic = greedy._generate_and_score_completions(rows(1, 2))
    direct = plain_batch(greedy, rows(1, 2))
    for key in direct:
        torch.testing.assert_close(dynamic[key], direct[key], rtol=0, atol=1e-6)
    assert greedy._metrics["train"]["dynamic_sampling/rounds"][-1] == 1


def test_when_the_rounds_keep_too_few_groups_zero_variance_groups_fill_the_batch(greedy, caplog, monkeypatch):
    """Every prompt flat: the 3 rounds keep nothing, the batch is round 0's groups (TRL's GRPO step: advantage 0),
    and the step says so in a warning and in dynamic_sampling/groups_filled."""
    monkeypatch.setattr(greedy, "train_dataset", Dataset.from_dict({"prompt": [PROMPTS[0], PROMPTS[3]] * 3}))
    with caplog.at_level(logging.WARNING, logger="grpo_lambda.trainer"):
        dynamic = greedy._generate_and_score_completions(rows(0, 3))
    direct = plain_batch(greedy, rows(0, 3))
    for key in ("prompt_ids", "completion_ids", "advantages", "num_items_in_batch"):
        assert torch.equal(dynamic[key], direct[key]), key
    metrics = {name: values[-1] for name, values in greedy._metrics["train"].items()}
    assert metrics["dynamic_sampling/rounds"] == 3 and metrics["dynamic_sampling/groups_generated"] == 6
    assert metrics["dynamic_sampling/groups_kept"] == 0 and metrics["dynamic_sampling/groups_filled"] == 2
    assert "3 rounds kept 0 of the 2 groups the batch needs; 2 zero-variance groups fill it" in caplog.text


@pytest.mark.parametrize(
    "settings,name",
    [
        ({"dynamic_sampling": True, "scale_rewards": "batch"}, "scale_rewards=batch"),
        ({"dynamic_sampling": True, "multi_objective_aggregation": "normalize_then_sum"}, "normalize_then_sum"),
        ({"dynamic_sampling_max_rounds": 1}, "dynamic_sampling_max_rounds=1"),
    ],
)
def test_settings_dynamic_sampling_cannot_honour_are_refused_in_one_line(tmp_path, settings, name):
    from grpo_lambda.configs import parse_grpo_args

    with pytest.raises(GRPOLambdaError) as raised:
        parse_grpo_args(["--config", str(write_recipe(tmp_path, **settings))])
    assert name in str(raised.value) and "\n" not in str(raised.value)


# Real runs: the tiny model on the 81 sums problems, half of them flat (even answers), 2 groups of 4 per step.


def dynamic_run_flags(tiny_model_dir, tmp_path, output_dir, steps, per_device, *extra):
    from run_observed import TINY_RUN, sums_dataset

    return [
        *TINY_RUN,
        "--model_name_or_path",
        str(tiny_model_dir),
        "--dataset_name",
        str(sums_dataset(tmp_path, tiny_model_dir)),
        "--reward_funcs",
        "even_sums_flat",
        "--dynamic_sampling",
        "true",
        "--lr_scheduler_type",
        "constant",
        "--per_device_train_batch_size",
        str(per_device),
        "--max_steps",
        str(steps),
        "--save_steps",
        "2",
        "--output_dir",
        str(output_dir),
        *extra,
    ]


def check_batches(output_dir, steps, processes, per_device):
    """Every step's batch on every rank holds the recipe's rows, and, unless the step says it filled the batch,
    no group of it is flat (a flat group's advantages are all 0)."""
    from dynamic_sampling_run import batches
    from run_observed import step_records

    records = {r["step"]: r for r in step_records(output_dir)}
    assert sorted(records) == list(range(1, steps + 1))
    for rank in range(processes):
        per_step = batches(output_dir, rank)
        assert [b["step"] for b in per_step] == list(range(steps)) and {b["rows"] for b in per_step} == {per_device}
    for step in range(steps):
        advantages = [a for rank in range(processes) for a in batches(output_dir, rank)[step]["advantages"]]
        groups = torch.tensor(advantages).view(-1, GENERATIONS)
        flat = int((groups == 0).all(-1).sum())
        assert flat == records[step + 1]["dynamic_sampling/groups_filled"]
        assert records[step + 1]["dynamic_sampling/groups_generated"] >= len(groups)
    return records


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_keeps_the_recipes_batch_on_one_and_two_processes(tiny_model_dir, tmp_path, processes):
    from dynamic_sampling_run import command
    from run_observed import check_run, run

    output_dir, steps, per_device = tmp_path / "run", 2, 8 // processes
    run(command(*dynamic_run_flags(tiny_model_dir, tmp_path, output_dir, steps, per_device), processes=processes))
    check_run(output_dir, tiny_model_dir, steps, processes)
    records = check_batches(output_dir, steps, processes, per_device)
    assert sum(r["dynamic_sampling/rounds"] for r in records.values()) > steps  # flat groups made it draw more


@pytest.mark.slow
def test_a_resumed_run_draws_and_counts_what_the_uninterrupted_run_did(tiny_model_dir, tmp_path):
    """4 steps in one go, and 2 steps then the same command with max_steps 4 (which resumes from checkpoint-2):
    steps 3 and 4 draw the same extra problems, build the same batches and log the same counts, each step once."""
    from dynamic_sampling_run import batches, command
    from run_observed import run, step_records

    whole, split = tmp_path / "whole", tmp_path / "split"
    run(command(*dynamic_run_flags(tiny_model_dir, tmp_path, whole, 4, 8)))
    run(command(*dynamic_run_flags(tiny_model_dir, tmp_path, split, 2, 8)))
    run(command(*dynamic_run_flags(tiny_model_dir, tmp_path, split, 4, 8)))
    check_batches(split, 4, 1, 8)
    assert any(b["extra_problems"] for b in batches(whole, 0)[2:])  # the steps after the resume drew extra prompts
    assert batches(split, 0) == batches(whole, 0)
    names = [name for name in step_records(whole)[0] if name.startswith("dynamic_sampling/")]
    assert len(names) == 6
    for a, b in zip(step_records(whole), step_records(split), strict=True):
        assert {n: a[n] for n in names} == {n: b[n] for n in names}


@pytest.mark.slow
def test_a_run_with_vllm_colocated_logs_kept_and_generated_groups(tiny_model_dir, tmp_path):
    from dynamic_sampling_run import command
    from run_observed import check_run, run

    output_dir, steps = tmp_path / "run", 2
    flags = ("--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_max_model_length", "64")
    run(command(*dynamic_run_flags(tiny_model_dir, tmp_path, output_dir, steps, 8, *flags)))
    check_run(output_dir, tiny_model_dir, steps, processes=1)
    records = check_batches(output_dir, steps, 1, 8)
    for record in records.values():
        assert record["dynamic_sampling/groups_kept"] <= record["dynamic_sampling/groups_generated"]
        assert record["dynamic_sampling/generated_tokens"] >= record["dynamic_sampling/extra_generated_tokens"] >= 0
