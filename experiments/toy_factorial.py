"""`make reproduce-toy ARGS="--study factorial"`: is it the traces or the clamp? A 2 × 2 factorial on credit_echo.

GRPO-λ changes two things in GRPO: eligibility traces and an advantage clamp max(A, −0.1) (Table 2). The quick
study found GRPO + the clamp alone about level with most GRPO-λ variants. This study separates the two, for
ε-trace and ε-weight (`both`, λ 0.99, the paper's best 1.5B setting), with six arms (the two without traces are
shared by both trace families):

                  no clamp                                   clamp (−0.1)
    no traces     grpo                                       grpo+adv_clamp_min=-0.1
    ε-trace       eps_trace-both-0.99+adv_clamp_min=none     eps_trace-both-0.99
    ε-weight      eps_weight-both-0.99+adv_clamp_min=none    eps_weight-both-0.99

1. Pilot, for fair learning rates: every arm at every rate of LR_GRID on the pilot seeds (0, 1), at the quick
   study's length (200 steps), so the quick study's runs at 3e-4 are reused. Rule: an arm's learning rate is the
   one whose pilot runs end with the highest final reward (mean of the last 30 steps, averaged over the pilot
   seeds; a tie goes to the smaller rate). The shared learning rate is GRPO's pick.
2. Main runs: every arm at the shared rate and, where its own pick differs, at its own rate; seeds 100, 101, …
   (apart from the pilot's), 3× the quick study's steps. Seed k gives every arm the same SFT checkpoint, training
   prompts and sampling seed: a paired design. An arm whose pick is the shared rate runs once for both settings.
3. Per setting (shared rate, each arm's own rate): the paired difference of final reward (last 90 of 600 steps)
   and of the area under the reward curve per step (the mean reward over the run) for traces vs no traces within
   each clamp level, clamp vs no clamp within each trace level, and their interaction; each with a 95 % paired
   bootstrap interval over seeds and a sentence saying whether it is established (the interval excludes 0).

Outputs in <output_dir>/factorial/: results.md (pilot, tables, contrasts, sentences), results.json,
reward_vs_step.png (one panel per clamp level) and interaction.png (final reward by traces × clamp, with 95 %
intervals). Runs live with the quick study's under <output_dir>/runs/; finished runs are kept and skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from grpo_lambda.layout import run_record
from grpo_lambda.methods import PAPER_ADV_CLAMP_MIN, Method
from grpo_lambda.metrics_log import logged_mean, logged_std

from .toy import TASK_NAME
from .toy_benchmark import RL_SETTINGS, Run, final_value, plot_curves, run_all

MAIN_SCALE = 3.0  # main runs: 3× the quick study's steps
MAIN_SEED_BASE = 100  # main seeds 100, 101, …; the pilot's are 0, 1, … (the quick study's)
MAIN_SEEDS = 8
PILOT_SEEDS = 2
LR_GRID = (1e-4, 3e-4, 1e-3)
TRACE_FAMILIES = {"eps_trace": "ε-trace", "eps_weight": "ε-weight"}
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


def arm(family: str | None, clamp: bool) -> Method:
    """The cell (traces of `family` or none) × (clamp or not) of the factorial."""
    clamp_min = PAPER_ADV_CLAMP_MIN if clamp else None
    if family is None:
        return Method("grpo", adv_clamp_min=clamp_min)
    return Method(family, "both", 0.99, adv_clamp_min=clamp_min)


ARMS = [arm(family, clamp) for family in (None, *TRACE_FAMILIES) for clamp in (False, True)]


def contrasts() -> list[dict]:
    """The contrasts of the study: name and terms [(arm, coefficient)], one per trace family except the clamp's
    effect without traces, which both families share."""

    def traces(family: str) -> str:
        return f"{TRACE_FAMILIES[family]} `both` λ 0.99"

    rows = [dict(name="the clamp without traces", terms=[(arm(None, True), 1), (arm(None, False), -1)])]
    for family in TRACE_FAMILIES:
        none, clamp, traced, both = arm(None, False), arm(None, True), arm(family, False), arm(family, True)
        rows += [
            dict(name=f"{traces(family)} traces without the clamp", terms=[(traced, 1), (none, -1)]),
            dict(name=f"{traces(family)} traces with the clamp", terms=[(both, 1), (clamp, -1)]),
            dict(name=f"the clamp with {traces(family)} traces", terms=[(both, 1), (traced, -1)]),
            dict(
                name=f"the interaction ({traces(family)} traces' effect with the clamp minus without)",
                terms=[(both, 1), (clamp, -1), (traced, -1), (none, 1)],
            ),
        ]
    return rows


def bootstrap_mean_interval(
    values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of `values` (one per seed, at least two) and its percentile bootstrap interval
    (scipy.stats.bootstrap): `resamples` draws of as many seeds with replacement, the interval between the
    (1 − confidence)/2 and (1 + confidence)/2 quantiles of their means."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return float(values.mean()), float(interval.low), float(interval.high)


def paired_contrast(per_seed: dict[Method, dict[int, float]], terms: list[tuple[Method, int]]) -> dict:
    """Σ coefficient × value per seed (arms paired by seed index), then its mean and bootstrap interval over seeds."""
    seeds = sorted(per_seed[terms[0][0]])
    for method, _ in terms:
        if sorted(per_seed[method]) != seeds:
            raise ValueError(f"{method.tag} has seeds {sorted(per_seed[method])}, not {seeds}: cannot pair them.")
    differences = [sum(coefficient * per_seed[method][seed] for method, coefficient in terms) for seed in seeds]
    estimate, low, high = bootstrap_mean_interval(differences)
    return dict(estimate=estimate, low=low, high=high, seeds=seeds, per_seed=differences)


def verdict(result: dict) -> str:
    """Established when the interval excludes 0 (beyond float rounding of the per-seed sums)."""
    if result["low"] > 1e-9:
        return "established, higher"
    if result["high"] < -1e-9:
        return "established, lower"
    return "not established"


def pick_learning_rates(pilot: dict[Method, dict[float, float]]) -> dict[Method, float]:
    """The rule: per arm, the rate with the highest pilot final reward; a tie goes to the smaller rate."""
    return {method: max(sorted(by_rate), key=lambda rate: by_rate[rate]) for method, by_rate in pilot.items()}


def run_metrics(records: list[dict], last_steps: int, max_grad_norm: float) -> dict:
    """What the study reads of one run: final reward, area under the reward curve per step, KL at the end, mean
    pre-clip grad norm and the share of steps whose gradient was clipped."""
    norms = [r["grad_norm"] for r in records if r.get("grad_norm") is not None]
    return dict(
        final_reward=final_value(records, "reward", last_steps),
        reward_area=logged_mean([r["reward"] for r in records]),
        kl=final_value(records, "kl", last_steps),
        grad_norm=logged_mean(norms),
        clipped=sum(n > max_grad_norm for n in norms) / len(norms) if norms else float("nan"),
    )


def interval_text(result: dict) -> str:
    """ "+0.123 [+0.045, +0.201]": an estimate and its interval, signed, to 3 decimals."""

    def signed(value: float) -> str:
        return f"{round(value, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"

    return f"{signed(result['estimate'])} [{signed(result['low'])}, {signed(result['high'])}]"


def _expression(terms: list[tuple[Method, int]]) -> str:
    text = " ".join(f"{'+' if c > 0 else '−'} {m.tag}" for m, c in terms)
    return text.removeprefix("+ ")


def analyse(metrics: dict[Method, dict[int, dict]]) -> dict:
    """Per arm: mean ± std over seeds of each metric; per contrast: the paired estimates and intervals."""
    arms = {}
    for method, by_seed in metrics.items():
        arms[method.tag] = {
            key: {
                "mean": logged_mean([m[key] for m in by_seed.values()]),
                "std": logged_std([m[key] for m in by_seed.values()]),
            }
            for key in ("final_reward", "reward_area", "kl", "grad_norm", "clipped")
        }
        arms[method.tag]["final_reward_interval"] = bootstrap_mean_interval(
            [m["final_reward"] for m in by_seed.values()]
        )
    rows = []
    for contrast in contrasts():
        result = {"name": contrast["name"], "expression": _expression(contrast["terms"])}
        for key in ("final_reward", "reward_area"):
            per_seed = {
                method: {seed: m[key] for seed, m in metrics[method].items()} for method, _ in contrast["terms"]
            }
            result[key] = paired_contrast(per_seed, contrast["terms"])
        rows.append(result)
    return {"arms": arms, "contrasts": rows}


def sentences(analysis: dict) -> list[str]:
    """One sentence per contrast: its estimate, interval and verdict for final reward and for area."""
    lines = []
    for row in analysis["contrasts"]:
        final, area = row["final_reward"], row["reward_area"]
        name = row["name"].replace("the ", "The ", 1) if row["name"].startswith("the ") else row["name"]
        lines.append(
            f"{name} ({row['expression']}): final reward {interval_text(final)}, {verdict(final)}; area under the "
            f"reward curve {interval_text(area)}, {verdict(area)}."
        )
    return lines


def arms_table(analysis: dict, rates: dict[Method, float], last_steps: int, steps: int) -> str:
    lines = [
        f"| arm | traces | clamp | learning rate | final reward (last {last_steps} of {steps} steps; mean ± std, "
        "95 % interval of the mean) | area under the reward curve per step | KL to ref | grad norm (pre-clip) | "
        "steps clipped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in ARMS:
        a = analysis["arms"][method.tag]
        _, low, high = a["final_reward_interval"]
        traces = TRACE_FAMILIES.get(method.loss_variant, "none")
        clamp = "none" if method.adv_clamp_min is None else f"{method.adv_clamp_min:g}"
        lines.append(
            f"| {method.tag} | {traces} | {clamp} | {rates[method]:g} | {a['final_reward']['mean']:.3f} ± "
            f"{a['final_reward']['std']:.3f} [{low:.3f}, {high:.3f}] | {a['reward_area']['mean']:.3f} ± "
            f"{a['reward_area']['std']:.3f} | {a['kl']['mean']:.4f} | {a['grad_norm']['mean']:.3f} | "
            f"{a['clipped']['mean']:.0%} |"
        )
    return "\n".join(lines)


def contrasts_table(analysis: dict) -> str:
    lines = [
        "| contrast | arms (paired by seed) | Δ final reward [95 % CI] | verdict | Δ area per step [95 % CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in analysis["contrasts"]:
        final, area = row["final_reward"], row["reward_area"]
        lines.append(
            f"| {row['name']} | {row['expression']} | {interval_text(final)} | {verdict(final)} | {interval_text(area)} | "
            f"{verdict(area)} |"
        )
    return "\n".join(lines)


def pilot_table(pilot: dict, picks: dict, grid, last: int) -> str:
    """The pilot's final reward per arm (a Method, or any arm with a `tag`) and learning rate, and the rate picked."""
    lines = ["| arm | " + " | ".join(f"lr {rate:g}" for rate in grid) + " | pick |", "|---" * (len(grid) + 2) + "|"]
    for arm, by_rate in pilot.items():
        cells = [f"{logged_mean(by_rate[rate]):.3f} ± {logged_std(by_rate[rate]):.3f}" for rate in grid]
        lines.append(f"| {arm.tag} | " + " | ".join(cells) + f" | {picks[arm]:g} |")
    return f"Pilot: final reward (last {last} steps; mean ± std over the pilot seeds).\n\n" + "\n".join(lines)


def plot_reward_curves(logs: dict[str, dict[Method, list[list[dict]]]], rates, path: Path, window: int) -> Path:
    """Reward vs step, one column per clamp level, one row per learning-rate setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(logs), 2, figsize=(12, 4.6 * len(logs)), squeeze=False, sharey=True)
    for row, (setting, by_arm) in enumerate(logs.items()):
        for column, clamp in enumerate((False, True)):
            axis = axes[row][column]
            panel = {
                f"{m.tag}, lr {rates[setting][m]:g}": by_arm[m] for m in ARMS if (m.adv_clamp_min is not None) == clamp
            }
            plot_curves(axis, panel, window)
            axis.set_title(f"{'clamp max(A, −0.1)' if clamp else 'no clamp'}, {setting} learning rate", fontsize=10)
        axes[row][0].set_ylabel(f"training reward, moving average over {window} steps")
    figure.suptitle(f"{TASK_NAME}: mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_interaction(analyses: dict[str, dict], path: Path) -> Path:
    """Final reward by traces × clamp with 95 % bootstrap intervals of the seed mean: one panel per trace family
    and learning-rate setting, one line per clamp level (parallel lines: no interaction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(analyses), len(TRACE_FAMILIES), figsize=(10, 4.2 * len(analyses)), squeeze=False, sharey=True
    )
    for row, (setting, analysis) in enumerate(analyses.items()):
        for column, (family, label) in enumerate(TRACE_FAMILIES.items()):
            axis = axes[row][column]
            for offset, clamp in ((-0.03, False), (0.03, True)):
                cells = [analysis["arms"][arm(f, clamp).tag]["final_reward_interval"] for f in (None, family)]
                means = [c[0] for c in cells]
                errors = [[c[0] - c[1] for c in cells], [c[2] - c[0] for c in cells]]
                axis.errorbar(
                    [offset, 1 + offset],
                    means,
                    yerr=errors,
                    marker="o",
                    capsize=4,
                    label="clamp max(A, −0.1)" if clamp else "no clamp",
                )
            axis.set_xticks([0, 1], ["no traces", f"{label} both λ 0.99"])
            axis.set_xlim(-0.4, 1.4)
            axis.set_title(f"{label}, {setting} learning rate", fontsize=10)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        axes[row][0].set_ylabel("final reward (mean over seeds, 95 % interval)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def factorial_study(args: argparse.Namespace, out: Path, sft_dir: Path, sft: dict, size: dict, started: float) -> int:
    from tqdm.auto import tqdm

    grid = sorted(float(r) for r in args.lr_grid.split(",")) if args.lr_grid else list(LR_GRID)
    pilot_seeds = list(range(args.pilot_seeds if args.pilot_seeds is not None else PILOT_SEEDS))
    pilot_steps = args.pilot_steps or size["rl_steps"]
    pilot_last = max(1, round(size["last_steps"] * pilot_steps / size["rl_steps"]))
    seeds = [MAIN_SEED_BASE + i for i in range(args.seeds if args.seeds is not None else MAIN_SEEDS)]
    steps = max(1, round(size["rl_steps"] * args.scale))
    last_steps = max(1, round(size["last_steps"] * args.scale))
    study_dir = out / "factorial"
    study_dir.mkdir(parents=True, exist_ok=True)

    pilot_runs = [Run(m, rate, pilot_steps, s) for m in ARMS for rate in grid for s in pilot_seeds]
    print(
        f"[toy] factorial: {len(ARMS)} arms; pilot {len(pilot_runs)} runs of {pilot_steps} steps (lr {grid}, seeds "
        f"{pilot_seeds}); then {len(ARMS) * len(seeds)} runs of {steps} steps at the shared rate (seeds "
        f"{seeds[0]}–{seeds[-1]}) and {len(seeds)} more per arm whose own rate differs; {args.workers} at a time",
        flush=True,
    )
    print("[toy] 2/4 pilot", flush=True)
    with tqdm(total=sum(r.steps for r in pilot_runs), unit="step", desc="pilot steps", dynamic_ncols=True) as bar:
        run_all(pilot_runs, out, sft_dir, args.workers, bar)
    pilot = {
        m: {
            rate: [final_value(Run(m, rate, pilot_steps, s).records(out), "reward", pilot_last) for s in pilot_seeds]
            for rate in grid
        }
        for m in ARMS
    }
    picks = pick_learning_rates(
        {m: {rate: logged_mean(v) for rate, v in by_rate.items()} for m, by_rate in pilot.items()}
    )
    shared = picks[arm(None, False)]
    print(
        f"[toy] learning rates: shared (GRPO's) {shared:g}; " + ", ".join(f"{m.tag} {r:g}" for m, r in picks.items())
    )
    rates = {"shared": {m: shared for m in ARMS}, "own": picks}
    if all(rate == shared for rate in picks.values()):
        rates = {"shared": rates["shared"]}  # every arm picked the shared rate: one setting
    main_runs = list(dict.fromkeys(Run(m, r[m], steps, s) for r in rates.values() for m in ARMS for s in seeds))
    pace = logged_mean([run_record(r.folder(out))["seconds"] / r.steps for r in pilot_runs])
    minutes = sum(r.steps for r in main_runs) * pace / max(1, args.workers) / 60
    print(f"[toy] 3/4 main runs: {len(main_runs)} runs of {steps} steps (≈ {minutes:.0f} min at the pilot's pace)")
    with tqdm(total=sum(r.steps for r in main_runs), unit="step", desc="main steps", dynamic_ncols=True) as bar:
        run_all(main_runs, out, sft_dir, args.workers, bar)

    print("[toy] 4/4 tables and figures", flush=True)
    logs = {
        setting: {m: [Run(m, by_arm[m], steps, s).records(out) for s in seeds] for m in ARMS}
        for setting, by_arm in rates.items()
    }
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
    )
    return report(study_dir, pilot, rates, logs, design)


def report(study_dir: Path, pilot: dict, rates: dict[str, dict[Method, float]], logs: dict, design: dict) -> int:
    """Tables, sentences and figures from the runs' logs: `pilot` {arm: {rate: [final reward per pilot seed]}},
    `rates` {setting: {arm: rate}}, `logs` {setting: {arm: [records per main seed]}}."""
    seeds, steps, last_steps = design["seeds"], design["steps"], design["last_steps"]
    picks = rates.get("own", rates["shared"])
    shared = rates["shared"][arm(None, False)]
    analyses = {}
    for setting in rates:
        metrics = {
            m: {
                s: run_metrics(records, last_steps, RL_SETTINGS["max_grad_norm"])
                for s, records in zip(seeds, logs[setting][m], strict=True)
            }
            for m in ARMS
        }
        analyses[setting] = analyse(metrics)
    curves = plot_reward_curves(logs, rates, study_dir / "reward_vs_step.png", window=max(1, last_steps // 3))
    interaction = plot_interaction(analyses, study_dir / "interaction.png")
    minutes = (time.time() - design["started"]) / 60
    sft = design["sft"]
    lines = [
        f"# Factorial study on {TASK_NAME}: traces × clamp",
        "",
        f"Tiny Qwen2 SFT'd for {sft['sft_steps']} steps (exact-match rate {sft['test_accuracy_t1']:.2f} sampling at "
        f"T=1). Pilot: seeds {design['pilot_seeds']}, {design['pilot_steps']} steps, learning rates {design['grid']}; "
        f"rule: highest mean final reward over the pilot seeds, ties to the smaller rate; shared rate = GRPO's pick "
        f"({shared:g}). Main: seeds {seeds}, {steps} steps per run, final reward = mean of the last {last_steps} "
        f"steps, area = mean reward over all steps. Settings {json.dumps(RL_SETTINGS)}. Wall time of this "
        f"invocation: {minutes:.1f} min.",
        "",
        pilot_table(pilot, picks, design["grid"], design["pilot_last_steps"]),
    ]
    for setting, analysis in analyses.items():
        title = (
            "Every arm at the shared learning rate" if setting == "shared" else "Every arm at its own learning rate"
        )
        lines += [
            "",
            f"## {title}",
            "",
            arms_table(analysis, rates[setting], last_steps, steps),
            "",
            contrasts_table(analysis),
            "",
            f"Each contrast's mean over {len(seeds)} seeds (arms paired by seed) and its 95 % paired bootstrap "
            "interval; established = the interval excludes 0.",
            "",
            *(f"- {sentence}" for sentence in sentences(analysis)),
        ]
    if "own" not in rates:
        lines += ["", "Every arm picked the shared learning rate: its own-rate results are the shared-rate ones."]
    (study_dir / "results.md").write_text("\n".join(lines) + "\n")
    record = {
        "sft": sft,
        "pilot": {m.tag: {f"{r:g}": v for r, v in by_rate.items()} for m, by_rate in pilot.items()},
        "learning_rates": {s: {m.tag: r for m, r in by_arm.items()} for s, by_arm in rates.items()},
        **{k: v for k, v in design.items() if k not in ("sft", "started")},
        "analyses": analyses,
        "minutes": minutes,
    }
    (study_dir / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n" + "\n".join(lines[4:]))
    print(f"\ntable:   {study_dir / 'results.md'}\nfigures: {curves}\n         {interaction}")
    print(f"wall time: {minutes:.1f} min")
    return 0
