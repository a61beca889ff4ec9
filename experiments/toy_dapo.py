"""`make reproduce-toy ARGS="--study dapo"`: does GRPO-λ still help on a modern (DAPO-style) recipe? (issue 35.5)

GRPO (`grpo`) and GRPO-λ as the paper configures it (`eps_trace-both-0.99`, with its clamp) on three recipes, a
2 × 3 design whose cells share seeds:

    paper                          the quick and factorial studies' settings (toy_benchmark.RL_SETTINGS)
    dapo                           recipes/styles/dapo.yaml over them (read by grpo_lambda.configs.read_recipe):
                                   clip-higher, token-level loss, dynamic sampling, mask_truncated_completions, β = 0
    dapo+dynamic_sampling=false    the same overlay without dynamic sampling

1. Pilot, the factorial's rule: every arm at each rate of the grid on the pilot seeds; an arm's learning rate is the
   one whose pilot runs end with the highest final reward (ties to the smaller rate).
2. Main runs: every arm at its own rate on seeds 100, 101, … (apart from the pilot's); seed k gives every arm the
   same SFT checkpoint, the same prompts at each step and the same sampling seed (dynamic sampling's extra prompts
   come from its own stream: grpo_lambda.dynamic_sampling.extra_prompt_indices).
3. Per run: the final reward, the mean first-round reward over the last N steps (`toy/first_round_reward`, the
   step's own batch: with dynamic sampling TRL's `reward` averages every round of the step, and how many rounds
   there are depends on their rewards); the area (its mean over all steps); the tokens generated per step (TRL's
   `num_tokens`, prompt and completion tokens of every round, as `dynamic_sampling/generated_tokens` counts them).
   Per contrast (paired by seed; 95 % percentile bootstrap intervals over seeds, scipy.stats.bootstrap): Δ final
   reward, Δ area, the ratio of generated tokens per step, and Δ final reward at equal generation (both arms read
   over the N steps up to the step at which each has generated the smaller of their two totals).

Outputs in <output_dir>/dapo/: results.md (pilot, arms, contrasts, sentences, cost), results.json, reward_vs_step.png
(one panel per recipe) and reward_vs_tokens.png (one panel per method). Runs live with the other studies' under
<output_dir>/runs/ (the paper-recipe runs are the factorial's where sizes agree); finished runs are kept and skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from grpo_lambda.layout import run_record
from grpo_lambda.methods import Method
from grpo_lambda.metrics_log import logged_mean, logged_std

from .toy import TASK_NAME
from .toy_benchmark import RL_SETTINGS, Run, plot_curves, run_all, style_settings
from .toy_factorial import (
    bootstrap_mean_interval,
    interval_text,
    paired_contrast,
    pick_learning_rates,
    pilot_table,
    verdict,
)

METHODS = {"grpo": Method("grpo"), "grpo_lambda": Method("eps_trace", "both", 0.99)}  # the factorial's best arm
DS_OFF = "dapo+dynamic_sampling=false"
RECIPES = {"paper": "", "dapo": "dapo", "dapo without dynamic sampling": DS_OFF}  # name: toy_benchmark.style_settings
# Sizes, for ~2 h of one core (docs/toy_benchmark.md, "DAPO study"), relative to the quick study's (SIZES): main runs
# 2× its steps (400) and its last-N window (60: the last 15 %), pilot runs 0.75× (150 steps, the last 22)
MAIN_SCALE = 2.0
MAIN_SEEDS = 6
MAIN_SEED_BASE = 100  # main seeds 100, 101, … as the factorial's; the pilot's are 0, 1, …
PILOT_SCALE = 0.75
PILOT_SEEDS = 1
LR_GRID = (1e-4, 3e-4)  # 1e-3 collapsed every arm of the factorial's pilot (β = 0 only removes a restoring force)
FIRST_ROUND_REWARD = "toy/first_round_reward"
NAN = float("nan")


@dataclass(frozen=True)
class Arm:
    """A method on a recipe (`style`: toy_benchmark.style_settings; "" for the paper's)."""

    method: Method
    style: str

    @property
    def tag(self) -> str:
        return f"{self.method.tag} @ {self.recipe}"

    @property
    def recipe(self) -> str:
        return next(name for name, style in RECIPES.items() if style == self.style)

    def run(self, learning_rate: float, steps: int, seed: int) -> Run:
        return Run(self.method, learning_rate, steps, seed, style=self.style)


def arm(method: str, recipe: str) -> Arm:
    return Arm(METHODS[method], RECIPES[recipe])


ARMS = [arm(method, recipe) for recipe in RECIPES for method in METHODS]


def contrasts() -> list[dict]:
    """The contrasts: name and terms [(arm, coefficient)]."""
    lam = "GRPO-λ vs GRPO"
    rows = [
        dict(name=f"{lam} on {recipe}", terms=[(arm("grpo_lambda", recipe), 1), (arm("grpo", recipe), -1)])
        for recipe in RECIPES
    ]
    rows.append(
        dict(
            name="the interaction (GRPO-λ's gain on dapo minus on paper)",
            terms=[
                (arm("grpo_lambda", "dapo"), 1),
                (arm("grpo", "dapo"), -1),
                (arm("grpo_lambda", "paper"), -1),
                (arm("grpo", "paper"), 1),
            ],
        )
    )
    for method, label in (("grpo", "GRPO"), ("grpo_lambda", "GRPO-λ")):
        rows.append(
            dict(name=f"dapo vs paper recipe, {label}", terms=[(arm(method, "dapo"), 1), (arm(method, "paper"), -1)])
        )
    for method, label in (("grpo", "GRPO"), ("grpo_lambda", "GRPO-λ")):
        rows.append(
            dict(
                name=f"dynamic sampling on vs off in dapo, {label}",
                terms=[(arm(method, "dapo"), 1), (arm(method, "dapo without dynamic sampling"), -1)],
            )
        )
    return rows


def cumulative_tokens(records: list[dict]) -> list[float]:
    """Tokens generated up to each step (TRL's `num_tokens`: prompt and completion tokens of every round)."""
    return [float(r["num_tokens"]) for r in records]


def reward_until(records: list[dict], step_index: int, last_steps: int) -> float:
    """The mean first-round reward over the `last_steps` steps ending at `step_index` (0-based, included)."""
    return logged_mean(
        [r.get(FIRST_ROUND_REWARD) for r in records[max(0, step_index - last_steps + 1) : step_index + 1]]
    )


def reward_at_tokens(records: list[dict], budget: float, last_steps: int) -> float:
    """The final reward read where the run had generated `budget` tokens: the first step whose cumulative count
    reaches it (the last step if none does)."""
    tokens = cumulative_tokens(records)
    index = next((i for i, t in enumerate(tokens) if t >= budget), len(tokens) - 1)
    return reward_until(records, index, last_steps)


def run_metrics(records: list[dict], last_steps: int, max_grad_norm: float) -> dict:
    """What the study reads of one run (its per-step records)."""
    norms = [r["grad_norm"] for r in records if r.get("grad_norm") is not None]
    steps = len(records)
    return dict(
        final_reward=reward_until(records, steps - 1, last_steps),
        reward_area=logged_mean([r.get(FIRST_ROUND_REWARD) for r in records]),
        tokens_per_step=cumulative_tokens(records)[-1] / steps,
        extra_tokens_per_step=logged_mean([r.get("dynamic_sampling/extra_generated_tokens") for r in records]),
        rounds=logged_mean([r.get("dynamic_sampling/rounds") for r in records]),
        groups_filled=sum(r.get("dynamic_sampling/groups_filled") or 0 for r in records),
        zero_std_groups=logged_mean([r.get("toy/first_round_zero_std_groups") for r in records]),
        completion_length=logged_mean([r.get("completions/mean_length") for r in records]),
        grad_norm=logged_mean(norms),
        clipped=sum(n > max_grad_norm for n in norms) / len(norms) if norms else float("nan"),
    )


ARM_KEYS = (
    "final_reward",
    "reward_area",
    "tokens_per_step",
    "extra_tokens_per_step",
    "rounds",
    "groups_filled",
    "zero_std_groups",
    "completion_length",
    "grad_norm",
    "clipped",
)


def analyse(metrics: dict[Arm, dict[int, dict]], logs: dict[Arm, dict[int, list[dict]]], last_steps: int) -> dict:
    """Per arm: mean ± std over seeds of each metric; per contrast: paired estimates and intervals of Δ final reward,
    Δ area, the ratio of tokens per step, and (two-arm contrasts) Δ final reward at equal generation."""
    arms = {}
    for a, by_seed in metrics.items():
        arms[a.tag] = {
            key: {
                "mean": logged_mean([m[key] for m in by_seed.values()]),
                "std": logged_std([m[key] for m in by_seed.values()]),
            }
            for key in ARM_KEYS
        }
        arms[a.tag]["final_reward_interval"] = bootstrap_mean_interval([m["final_reward"] for m in by_seed.values()])
    rows = []
    for contrast in contrasts():
        terms = contrast["terms"]
        result = {
            "name": contrast["name"],
            "expression": " ".join(f"{'+' if c > 0 else '−'} {a.tag}" for a, c in terms).removeprefix("+ "),
        }
        for key in ("final_reward", "reward_area"):
            per_seed = {a: {seed: m[key] for seed, m in metrics[a].items()} for a, _ in terms}
            result[key] = paired_contrast(per_seed, terms)
        if len(terms) == 2:
            (first, _), (second, _) = terms
            seeds = sorted(logs[first])
            ratio = {first: {}}
            at_equal = {first: {}, second: {}}
            for seed in seeds:
                budget = min(cumulative_tokens(logs[a][seed])[-1] for a in (first, second))
                for a in (first, second):
                    at_equal[a][seed] = reward_at_tokens(logs[a][seed], budget, last_steps)
                ratio[first][seed] = metrics[first][seed]["tokens_per_step"] / metrics[second][seed]["tokens_per_step"]
            result["final_reward_at_equal_tokens"] = paired_contrast(at_equal, terms)
            result["tokens_per_step_ratio"] = paired_contrast(ratio, [(first, 1)])
        rows.append(result)
    return {"arms": arms, "contrasts": rows}


def _ratio(result: dict) -> str:
    def percent(value: float) -> str:
        return f"{round(100 * (value - 1)) + 0:+d} %"

    return f"{percent(result['estimate'])} [{percent(result['low'])}, {percent(result['high'])}]"


def sentences(analysis: dict) -> list[str]:
    lines = []
    for row in analysis["contrasts"]:
        final, area = row["final_reward"], row["reward_area"]
        name = row["name"][0].upper() + row["name"][1:]
        text = (
            f"{name} ({row['expression']}): final reward {interval_text(final)}, {verdict(final)}; area {interval_text(area)}, "
            f"{verdict(area)}"
        )
        if "tokens_per_step_ratio" in row:
            equal = row["final_reward_at_equal_tokens"]
            text += (
                f"; tokens generated per step {_ratio(row['tokens_per_step_ratio'])}; final reward at equal generation "
                f"{interval_text(equal)}, {verdict(equal)}"
            )
        lines.append(text + ".")
    return lines


def arms_table(analysis: dict, rates: dict[Arm, float], last_steps: int, steps: int) -> str:
    lines = [
        f"| arm | learning rate | final reward (last {last_steps} of {steps} steps; mean ± std, 95 % interval) | "
        "area per step | tokens generated per step | of which extra (dynamic sampling) | rounds per step | "
        "groups filled at the cap, per run | first-round groups with one reward | grad norm (pre-clip) | "
        "steps clipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float, spec: str) -> str:
        return "—" if value != value else format(value, spec)  # NaN: not logged (no dynamic sampling)

    for a in ARMS:
        v = analysis["arms"][a.tag]
        _, low, high = v["final_reward_interval"]
        lines.append(
            f"| {a.tag} | {rates[a]:g} | {v['final_reward']['mean']:.3f} ± {v['final_reward']['std']:.3f} "
            f"[{low:.3f}, {high:.3f}] | {v['reward_area']['mean']:.3f} | {v['tokens_per_step']['mean']:.0f} | "
            f"{cell(v['extra_tokens_per_step']['mean'], '.0f')} | {cell(v['rounds']['mean'], '.2f')} | "
            f"{cell(v['groups_filled']['mean'] if v['rounds']['mean'] == v['rounds']['mean'] else NAN, '.1f')} | "
            f"{v['zero_std_groups']['mean']:.0%} | {v['grad_norm']['mean']:.2f} | {v['clipped']['mean']:.0%} |"
        )
    return "\n".join(lines)


def contrasts_table(analysis: dict) -> str:
    lines = [
        "| contrast | Δ final reward [95 % CI] | Δ area per step [95 % CI] | tokens generated per step, ratio − 1 "
        "[95 % CI] | Δ final reward at equal generation [95 % CI] |",
        "|---|---|---|---|---|",
    ]
    for row in analysis["contrasts"]:
        final, area = row["final_reward"], row["reward_area"]
        tokens = _ratio(row["tokens_per_step_ratio"]) if "tokens_per_step_ratio" in row else "—"
        equal = row.get("final_reward_at_equal_tokens")
        equal = f"{interval_text(equal)} {verdict(equal)}" if equal else "—"
        lines.append(
            f"| {row['name']} | {interval_text(final)} {verdict(final)} | {interval_text(area)} {verdict(area)} | {tokens} | "
            f"{equal} |"
        )
    return "\n".join(lines)


def plot_figures(
    logs: dict[Arm, list[list[dict]]], rates: dict[Arm, float], study_dir: Path, window: int
) -> list[Path]:
    """reward_vs_step.png: first-round reward vs step, one panel per recipe; reward_vs_tokens.png: the same against
    the tokens generated (seed mean), one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo_lambda.metrics_log import trailing_mean

    figure, axes = plt.subplots(1, len(RECIPES), figsize=(5.2 * len(RECIPES), 4.6), sharey=True, squeeze=False)
    for axis, recipe in zip(axes[0], RECIPES, strict=True):
        panel = {f"{a.method.tag}, lr {rates[a]:g}": logs[a] for a in ARMS if a.recipe == recipe}
        plot_curves(axis, panel, window, key=FIRST_ROUND_REWARD)
        axis.set_title(recipe, fontsize=10)
    axes[0][0].set_ylabel(f"training reward (first round), moving average over {window} steps")
    figure.suptitle(f"{TASK_NAME}: GRPO vs GRPO-λ per recipe, mean ± std over seeds")
    figure.tight_layout()
    by_step = study_dir / "reward_vs_step.png"
    figure.savefig(by_step, dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(METHODS), figsize=(6.5 * len(METHODS), 4.6), sharey=True, squeeze=False)
    for axis, method in zip(axes[0], METHODS.values(), strict=True):
        for a in (a for a in ARMS if a.method == method):
            seeds = logs[a]
            length = min(len(records) for records in seeds)
            tokens = [logged_mean([cumulative_tokens(r)[i] for r in seeds]) / 1e6 for i in range(length)]
            smoothed = [
                trailing_mean([r.get(FIRST_ROUND_REWARD) for r in records[:length]], window) for records in seeds
            ]
            reward = [logged_mean([s[i] for s in smoothed]) for i in range(length)]
            axis.plot(tokens, reward, label=f"{a.recipe}, lr {rates[a]:g}", linewidth=1.8)
        axis.set_title(method.tag, fontsize=10)
        axis.set_xlabel("tokens generated (millions; prompt and completion, every round)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel(f"training reward (first round), moving average over {window} steps")
    figure.suptitle(f"{TASK_NAME}: reward against generation, seed means")
    figure.tight_layout()
    by_tokens = study_dir / "reward_vs_tokens.png"
    figure.savefig(by_tokens, dpi=120)
    plt.close(figure)
    return [by_step, by_tokens]


def cpu_minutes(runs: list[Run], output_dir: Path) -> float:
    return sum(run_record(r.folder(output_dir))["cpu_seconds"] for r in dict.fromkeys(runs)) / 60


def dapo_study(args: argparse.Namespace, out: Path, sft_dir: Path, sft: dict, size: dict, started: float) -> int:
    from tqdm.auto import tqdm

    grid = sorted(float(r) for r in args.lr_grid.split(",")) if args.lr_grid else list(LR_GRID)
    pilot_seeds = list(range(args.pilot_seeds if args.pilot_seeds is not None else PILOT_SEEDS))
    pilot_steps = args.pilot_steps or max(1, round(size["rl_steps"] * PILOT_SCALE))
    pilot_last = max(1, round(size["last_steps"] * pilot_steps / size["rl_steps"]))
    seeds = [MAIN_SEED_BASE + i for i in range(args.seeds if args.seeds is not None else MAIN_SEEDS)]
    steps = max(1, round(size["rl_steps"] * args.scale))
    last_steps = max(1, round(size["last_steps"] * args.scale))
    study_dir = out / "dapo"
    study_dir.mkdir(parents=True, exist_ok=True)
    for style in RECIPES.values():
        style_settings(style)  # a missing or changed style file stops here, before any run

    pilot_runs = [a.run(rate, pilot_steps, s) for a in ARMS for rate in grid for s in pilot_seeds]
    print(
        f"[toy] dapo: {len(ARMS)} arms; pilot {len(pilot_runs)} runs of {pilot_steps} steps (lr {grid}, seeds "
        f"{pilot_seeds}); then {len(ARMS) * len(seeds)} runs of {steps} steps at each arm's rate (seeds "
        f"{seeds[0]}–{seeds[-1]}); {max(1, args.workers)} at a time",
        flush=True,
    )
    print("[toy] 2/4 pilot", flush=True)
    with tqdm(total=sum(r.steps for r in pilot_runs), unit="step", desc="pilot steps", dynamic_ncols=True) as bar:
        run_all(pilot_runs, out, sft_dir, args.workers, bar)
    pilot = {
        a: {
            rate: [
                reward_until(a.run(rate, pilot_steps, s).records(out), pilot_steps - 1, pilot_last)
                for s in pilot_seeds
            ]
            for rate in grid
        }
        for a in ARMS
    }
    picks = pick_learning_rates(
        {a: {rate: logged_mean(v) for rate, v in by_rate.items()} for a, by_rate in pilot.items()}
    )
    print("[toy] learning rates: " + ", ".join(f"{a.tag} {r:g}" for a, r in picks.items()), flush=True)
    main_runs = [a.run(picks[a], steps, s) for a in ARMS for s in seeds]
    print(f"[toy] 3/4 main runs: {len(main_runs)} runs of {steps} steps", flush=True)
    with tqdm(total=sum(r.steps for r in main_runs), unit="step", desc="main steps", dynamic_ncols=True) as bar:
        run_all(main_runs, out, sft_dir, args.workers, bar)

    print("[toy] 4/4 tables and figures", flush=True)
    logs = {a: [a.run(picks[a], steps, s).records(out) for s in seeds] for a in ARMS}
    cost = {"pilot_cpu_minutes": cpu_minutes(pilot_runs, out), "main_cpu_minutes": cpu_minutes(main_runs, out)}
    design = dict(
        sft=sft,
        pilot_seeds=pilot_seeds,
        pilot_steps=pilot_steps,
        pilot_last_steps=pilot_last,
        grid=grid,
        seeds=seeds,
        steps=steps,
        last_steps=last_steps,
        started=started,
        **cost,
    )
    return report(study_dir, pilot, picks, logs, design)


def report(
    study_dir: Path, pilot: dict, picks: dict[Arm, float], logs: dict[Arm, list[list[dict]]], design: dict
) -> int:
    """Tables, sentences and figures from the runs' logs: `pilot` {arm: {rate: [final reward per pilot seed]}},
    `picks` {arm: rate}, `logs` {arm: [records per main seed]}."""
    seeds, steps, last_steps = design["seeds"], design["steps"], design["last_steps"]
    by_seed = {a: dict(zip(seeds, logs[a], strict=True)) for a in ARMS}
    metrics = {
        a: {s: run_metrics(records, last_steps, RL_SETTINGS["max_grad_norm"]) for s, records in by_seed[a].items()}
        for a in ARMS
    }
    analysis = analyse(metrics, by_seed, last_steps)
    figures = plot_figures(logs, picks, study_dir, window=max(1, last_steps // 2))
    minutes = (time.time() - design["started"]) / 60
    sft = design["sft"]
    styles = {name: style_settings(style) for name, style in RECIPES.items() if style}
    lines = [
        f"# DAPO study on {TASK_NAME}: GRPO vs GRPO-λ on the paper's recipe and on the DAPO overlay",
        "",
        f"Tiny Qwen2 SFT'd for {sft['sft_steps']} steps (exact-match rate {sft['test_accuracy_t1']:.2f} sampling at "
        f"T=1). Paper recipe: {json.dumps(RL_SETTINGS)}; overlays: {json.dumps(styles)}. Pilot: seeds "
        f"{design['pilot_seeds']}, {design['pilot_steps']} steps, learning rates {design['grid']}; rule: highest "
        f"mean final reward over the pilot seeds, ties to the smaller rate. Main: seeds {seeds}, {steps} steps per "
        f"run, final reward = mean first-round reward of the last {last_steps} steps, area = its mean over all "
        f"steps. CPU time of the runs: pilot {design['pilot_cpu_minutes']:.0f} min, main runs "
        f"{design['main_cpu_minutes']:.0f} min. Wall time of this invocation: {minutes:.1f} min.",
        "",
        pilot_table(pilot, picks, design["grid"], design["pilot_last_steps"]),
        "",
        arms_table(analysis, picks, last_steps, steps),
        "",
        contrasts_table(analysis),
        "",
        f"Each contrast's mean over {len(seeds)} seeds (arms paired by seed) and its 95 % paired bootstrap interval; "
        "established = the interval excludes 0. Equal generation: each seed's two runs read where each had generated "
        "the smaller of their two token totals.",
        "",
        *(f"- {sentence}" for sentence in sentences(analysis)),
    ]
    (study_dir / "results.md").write_text("\n".join(lines) + "\n")
    record = {
        "sft": sft,
        "pilot": {a.tag: {f"{r:g}": v for r, v in by_rate.items()} for a, by_rate in pilot.items()},
        "learning_rates": {a.tag: r for a, r in picks.items()},
        **{k: v for k, v in design.items() if k not in ("sft", "started")},
        "per_seed": {a.tag: {str(s): m for s, m in by_seed_metrics.items()} for a, by_seed_metrics in metrics.items()},
        "analysis": analysis,
        "minutes": minutes,
    }
    (study_dir / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n" + "\n".join(lines[4:]))
    print(f"\ntable:   {study_dir / 'results.md'}\nfigures: " + "\n         ".join(str(f) for f in figures))
    print(f"wall time: {minutes:.1f} min")
    return 0
