"""Dynamic sampling (DAPO, Yu et al. 2025, §3.2 "Dynamic Sampling"), as pure functions on TRL's generation batches.

A group whose rewards are all equal has advantage 0 for every completion (A_NAE = (r − mean)/(std + 1e-4)), so it
adds no policy gradient, only KL and weight in the loss normaliser. Dynamic sampling drops such groups and
generates completions for more prompts until the batch holds the configured number of groups:

1. Round 0 is the step's own batch (the prompts TRL's dataloader drew); round k ≥ 1 draws as many prompts again
   from `extra_prompt_indices`, a stream of its own (the dataloader is never read twice, so resuming skips the same
   batches as without dynamic sampling).
2. A group is kept when its rewards vary (`groups_with_reward_variance`, TRL's own zero-std criterion).
3. The batch is the first kept groups in generation order (`select_groups`); when `max_rounds` rounds keep fewer
   than the batch needs, the earliest zero-variance groups fill it (TRL's GRPO step for those groups) and the
   caller logs it.
4. `stack_groups` builds the batch from those groups' rows as TRL would have built it from them alone (padding
   merged, `num_items_in_batch` recounted); each process takes its rows and `trim_padding` drops the padding
   columns no row of its slice needs. With group-scaled advantages (the only scaling allowed with it) a group's
   advantages depend on its own rewards, so the kept groups' loss and gradient are those of the batch built
   without the dropped ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# TRL's batch keys (GRPOTrainer._generate_and_score_completions, trl 1.16), by how rows of different rounds and
# processes are merged: prompts are left-padded, completions right-padded (key: padding value; None = the
# tokenizer's pad id), per-row values stacked as they are, and num_items_in_batch recounted.
LEFT_PADDED: dict[str, int | None] = {"prompt_ids": None, "prompt_mask": 0}
RIGHT_PADDED: dict[str, float | int | None] = {
    "completion_ids": None,
    "completion_mask": 0,
    "old_per_token_logps": 0.0,
    "ref_per_token_logps": 0.0,
    "sampling_per_token_logps": 0.0,
    "tool_mask": 1,
}
PER_ROW = ("advantages",)
RECOUNTED = ("num_items_in_batch",)
# [B, T] with a token-level vLLM importance-sampling mode, [B, 1] with a sequence-level one
IMPORTANCE_SAMPLING_RATIO = "importance_sampling_ratio"


def groups_with_reward_variance(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Which groups dynamic sampling keeps: those whose rewards vary. TRL's criterion for `frac_reward_zero_std`:
    the group's standard deviation (over its scorable completions, NaN rewards left out) is not close to 0; a group
    with fewer than two scorable completions has none and is dropped.

    Args:
        rewards: [N] total rewards (TRL's weighted sum over reward functions; NaN for an unscorable completion), N a
            multiple of `num_generations`, groups consecutive.
    Returns:
        [N / num_generations] bool.
    """
    grouped = rewards.view(-1, num_generations).to(torch.float64)
    count = (~grouped.isnan()).sum(-1)
    mean = grouped.nansum(-1, keepdim=True) / count.clamp(min=1)[:, None]
    variance = ((grouped - mean) ** 2).nansum(-1) / (count - 1).clamp(min=1)
    std = variance.sqrt()
    return (count >= 2) & ~torch.isclose(std, torch.zeros_like(std))


def extra_prompt_indices(
    dataset_size: int, prompts: int, step: int, round_index: int, max_rounds: int, seed: int
) -> list[int]:
    """The dataset rows of extra round `round_index` (≥ 1) at optimizer step `step`: `prompts` consecutive entries of
    a stream of shuffled passes over the dataset (pass e shuffled with seed·10007 + e), at the slot reserved for that
    round: slots (step·(max_rounds − 1) + round_index − 1)·prompts onwards. A function of (seed, step, round) only,
    so a resumed run draws what the uninterrupted run drew; within a pass no prompt comes twice."""
    if not 1 <= round_index < max_rounds:
        raise ValueError(f"extra round {round_index} is outside 1..{max_rounds - 1}")
    start = (step * (max_rounds - 1) + round_index - 1) * prompts
    indices, permutations = [], {}
    for position in range(start, start + prompts):
        epoch, offset = divmod(position, dataset_size)
        if epoch not in permutations:
            generator = torch.Generator().manual_seed(seed * 10007 + epoch)
            permutations[epoch] = torch.randperm(dataset_size, generator=generator)
        indices.append(int(permutations[epoch][offset]))
    return indices


@dataclass(frozen=True)
class GroupSelection:
    """The batch's groups, as (round, group within the round) in batch order, and how many of them are zero-variance
    groups put in because the rounds kept too few (`filled`)."""

    groups: tuple[tuple[int, int], ...]
    kept: int
    filled: int


def select_groups(keep: list[torch.Tensor], target_groups: int) -> GroupSelection:
    """The first `target_groups` kept groups in generation order (round by round, then as TRL gathered them); when
    the rounds kept fewer, the earliest dropped groups complete the batch.

    Args:
        keep: per round, the [groups] bool mask of `groups_with_reward_variance`.
    """
    kept = [(r, g) for r, mask in enumerate(keep) for g in mask.nonzero().flatten().tolist()]
    dropped = [(r, g) for r, mask in enumerate(keep) for g in (~mask).nonzero().flatten().tolist()]
    chosen = kept[:target_groups]
    filled = dropped[: target_groups - len(chosen)]
    if len(chosen) + len(filled) < target_groups:
        raise ValueError(f"the rounds hold {len(kept) + len(dropped)} groups, fewer than the batch's {target_groups}")
    return GroupSelection(tuple(chosen + filled), kept=len(kept), filled=len(filled))


def _pad_width(tensor: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    missing = width - tensor.shape[1]
    if missing == 0:
        return tensor
    filler = torch.full((tensor.shape[0], missing), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([filler, tensor] if left else [tensor, filler], dim=1)


def stack_groups(
    rounds: list[dict[str, torch.Tensor]],
    selection: GroupSelection,
    num_generations: int,
    pad_token_id: int,
    sequence_level_ratio: bool,
) -> dict[str, torch.Tensor]:
    """The batch of the selected groups, in selection order, from the rounds' whole (all-process) batches.

    Prompt tensors are left-padded and completion tensors right-padded to the widest round; `num_items_in_batch`
    is the number of loss tokens of the batch (completion mask × tool mask), as TRL counts it.

    Args:
        rounds: per round, TRL's batch gathered from every process (keys as in LEFT_PADDED, RIGHT_PADDED, PER_ROW,
            IMPORTANCE_SAMPLING_RATIO).
        sequence_level_ratio: the importance-sampling ratio is per sequence ([B, 1]), not per token.
    Returns:
        the batch, [len(selection.groups) · num_generations] rows.
    """
    keys = rounds[0].keys()
    rows = [
        (r, torch.arange(g * num_generations, (g + 1) * num_generations, device=rounds[r]["advantages"].device))
        for r, g in selection.groups
    ]
    batch = {}
    for key in keys:
        if key in RECOUNTED:
            continue
        left = key in LEFT_PADDED
        padded = left or key in RIGHT_PADDED or (key == IMPORTANCE_SAMPLING_RATIO and not sequence_level_ratio)
        pieces = [rounds[r][key].index_select(0, index) for r, index in rows]
        if padded:
            value = {**LEFT_PADDED, **RIGHT_PADDED}.get(key, 0.0)
            value = pad_token_id if value is None else value
            width = max(piece.shape[1] for piece in pieces)
            pieces = [_pad_width(piece, width, value, left) for piece in pieces]
        batch[key] = torch.cat(pieces)
    loss_mask = batch["completion_mask"] * batch["tool_mask"] if "tool_mask" in batch else batch["completion_mask"]
    batch["num_items_in_batch"] = loss_mask.sum()
    return batch


def trim_padding(
    batch: dict[str, torch.Tensor], pad_to_multiple_of: int | None, sequence_level_ratio: bool
) -> dict[str, torch.Tensor]:
    """Drops the leading prompt columns and trailing completion columns that no row uses (its mask is 0 there in
    every row), keeping widths a multiple of `pad_to_multiple_of`: the widths TRL gives a batch of these rows (a
    completion masked whole by `mask_truncated_completions` keeps only the width the others need; it is masked)."""

    def width(used: int, full: int) -> int:
        if pad_to_multiple_of:
            used = -(-used // pad_to_multiple_of) * pad_to_multiple_of
        return min(max(used, 1), full)

    prompt_width = width(int(batch["prompt_mask"].sum(-1).max()), batch["prompt_mask"].shape[1])
    mask = batch["completion_mask"]
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    completion_width = width(int((mask * positions).max()), mask.shape[1])
    trimmed = dict(batch)
    for key in batch:
        if key in LEFT_PADDED:
            trimmed[key] = batch[key][:, -prompt_width:]
        elif key in RIGHT_PADDED or (key == IMPORTANCE_SAMPLING_RATIO and not sequence_level_ratio):
            trimmed[key] = batch[key][:, :completion_width]
    return trimmed
