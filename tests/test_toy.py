"""The credit_echo task (generator, verifier, dataset source), `make reproduce-toy` at its smallest, and the
factorial study: its paired bootstrap on hand-computed examples, its report on hand-made logs, and the whole study
at a tiny scale."""

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.toy import ALPHABET, credit_echo_dataset, credit_echo_problem
from grpo_lambda.data import load_problem_dataset
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.methods import Method
from grpo_lambda.metrics_log import read_steps
from grpo_lambda.reruns import final_step
from grpo_lambda.rewards import exact_match, get_reward_funcs


def test_generator_is_deterministic_per_seed_and_splits_differ():
    first, again = credit_echo_dataset(50, 3), credit_echo_dataset(50, 3)
    assert first.to_dict() == again.to_dict()
    assert credit_echo_dataset(50, 4)["problem"] != first["problem"]
    assert credit_echo_dataset(50, 3, "test")["problem"] != first["problem"]


def test_answers_follow_the_rule():
    # "+2 : a j e =": a(0)+2 = c, j(9)+2 = 11 ≡ 1 = b, e(4)+2 = 6 = g; then 7 more echoes
    rng = random.Random(0)
    for _ in range(200):
        problem, answer = credit_echo_problem(rng, num_letters=3, repeats=8, max_shift=2)
        shift, letters = int(problem[1]), problem.split(" : ")[1].rstrip(" =").split()
        expected = " ".join(ALPHABET[(ALPHABET.index(x) + shift) % 10] for x in letters)
        assert answer.split(" ; ") == [expected] * 8 and 1 <= shift <= 2


@pytest.mark.parametrize(
    ("completion", "correct"),
    [
        ("c b g ; c b g", True),
        ("  c b g ;\nc  b g ", True),  # whitespace does not matter
        ("c b g ; c b h", False),  # a wrong late letter
        ("d b g ; c b g", False),  # a wrong early decision
        ("c b g", False),  # a missing echo
        ("c b g ; c b g ;", False),  # trailing text
        ("cbg ; cbg", False),  # letters must be separate
        ("", False),
    ],
)
def test_verifier_is_exact(completion, correct):
    assert exact_match(completion, "c b g ; c b g") is correct


def test_dataset_source_and_exact_reward():
    rows = load_problem_dataset("credit_echo", "train", train_size=6, test_size=2, seed=1, level="one_step")
    assert rows.column_names == ["problem", "answer"] and len(rows) == 6
    assert rows["answer"] == credit_echo_dataset(6, 1)["answer"]
    (reward,) = get_reward_funcs(["exact"])
    completions = [
        rows["answer"][0],
        rows["answer"][0] + " ; x",
        [{"role": "assistant", "content": rows["answer"][1]}],
    ]
    assert reward(completions, answer=rows["answer"][:3]) == [1.0, 0.0, 0.0]
    assert reward(completions[2:], answer=[rows["answer"][1]]) == [1.0]


def test_library_does_not_import_the_experiments_and_the_benchmark_runs_from_any_folder(tmp_path):
    """The library's modules load without experiments; `python -m ...toy_benchmark` needs no repo cwd
    (one interpreter, from an empty folder: the import check, then the module run as `-m` runs it)."""
    code = (
        "import runpy, sys, grpo_lambda.data, grpo_lambda.rewards;"
        "print(sorted(m for m in sys.modules if 'experiments' in m));"
        "sys.argv = ['toy_benchmark', '--help'];"
        "runpy.run_module('experiments.reproduce_toy', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "[]\n" in shown.stdout and "--study {quick,factorial,dapo}" in shown.stdout


def test_quick_methods_are_tags_and_include_the_clamp_control():
    """The comparison's reading rests on grpo+adv_clamp_min=-0.1: GRPO with GRPO-λ's clamp and nothing else."""
    from experiments.toy_benchmark import QUICK_METHODS, parse_methods

    tags = [m.tag for m in QUICK_METHODS]
    assert tags == [
        "grpo",
        "grpo+advantage_bias_correction=eos_bound",
        "grpo+adv_clamp_min=-0.1",
        "eps_trace-both-0.99",
        "eps_trace-recent-0.99",
        "eps_weight-both-0.99",
        "eps_weight-recent-0.99",
    ]
    assert parse_methods(",".join(tags)) == QUICK_METHODS
    with pytest.raises(GRPOLambdaError, match="--methods: 'eps-trace-both-λ0.99' is not a method tag"):
        parse_methods("grpo,eps-trace-both-λ0.99")


def test_reproduce_toy_small_writes_table_plot_and_logs_and_resumes(tmp_path):
    """`make reproduce-toy` at its smallest: SFT → two methods × one seed → table, PNG, per-step logs; a rerun
    trains nothing and rewrites the same table."""
    from experiments.reproduce_toy import main

    argv = [
        "--size",
        "small",
        "--methods",
        "grpo,eps_trace-both-0.99",
        "--no_lambda_098",
        "--workers",
        "0",
        "--output_dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| grpo |" in table and "| eps_trace-both-0.99 |" in table
    assert (tmp_path / "reward_vs_step.png").stat().st_size > 10_000
    for method in ("grpo", "eps_trace-both-0.99"):
        run = tmp_path / "runs" / method / "lr0.0003_steps2" / "seed0"
        steps = read_steps(run / "metrics.jsonl")
        assert len(steps) == 2 and all("lemma1/bound_mean" in r and "kl" in r for r in steps)
        assert (run / "grpo_lambda_run.json").is_file() and final_step(run) == 2
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.jsonl")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs, "finished runs are not trained again"
    assert (tmp_path / "results.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[1]


# The factorial study


def test_bootstrap_interval_by_hand():
    """Per-seed differences (0, 0, 3): a resample of 3 seeds has mean k where k = the number of 3s drawn, so
    P(0) = (2/3)³ = 8/27, P(1) = 12/27, P(2) = 6/27, P(3) = 1/27 ≈ 0.037. The 2.5 % quantile is 0 (8/27 > 0.025)
    and the 97.5 % quantile is 3 (P(mean ≤ 2) = 26/27 ≈ 0.963 < 0.975): the interval is [0, 3] around 1, which
    touches 0, so the effect is not established."""
    from experiments.toy_factorial import bootstrap_mean_interval, verdict

    estimate, low, high = bootstrap_mean_interval([0.0, 0.0, 3.0])
    assert (estimate, low, high) == (1.0, 0.0, 3.0)
    assert verdict(dict(estimate=estimate, low=low, high=high)).startswith("not established")
    assert verdict(dict(estimate=0.2, low=0.1, high=0.3)) == "established, higher"
    assert verdict(dict(estimate=-0.2, low=-0.3, high=-0.1)) == "established, lower"


def test_contrast_pairs_by_seed():
    """Arm B is arm A + 0.1 on every seed while the seeds differ by 0.4: paired, each difference is 0.1, so every
    resample's mean is 0.1 and the interval is [0.1, 0.1] (established). Resampling the arms independently would
    give an interval from −0.3 to +0.5. Pairing is by seed, not by position; unmatched seeds are an error."""
    from experiments.toy_factorial import paired_contrast

    a, b = Method("grpo"), Method("grpo", adv_clamp_min=-0.1)
    result = paired_contrast({a: {100: 0.1, 101: 0.5}, b: {101: 0.6, 100: 0.2}}, [(b, 1), (a, -1)])
    assert result["seeds"] == [100, 101]
    assert result["per_seed"] == pytest.approx([0.1, 0.1])
    assert (result["estimate"], result["low"], result["high"]) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="cannot pair"):
        paired_contrast({a: {100: 0.1, 101: 0.5}, b: {100: 0.2, 102: 0.6}}, [(b, 1), (a, -1)])


def test_learning_rate_rule():
    from experiments.toy_factorial import pick_learning_rates

    a, b = Method("grpo"), Method("eps_trace", "both", 0.99)
    picks = pick_learning_rates({a: {1e-3: 0.1, 3e-4: 0.4, 1e-4: 0.2}, b: {1e-3: 0.5, 1e-4: 0.5, 3e-4: 0.3}})
    assert picks == {a: 3e-4, b: 1e-4}  # the highest final reward; a tie goes to the smaller rate


def test_factorial_report_from_hand_made_logs(tmp_path):
    """The report of two seeds whose runs have constant rewards (final reward = area = that constant): the tables,
    the contrasts with their hand-computed intervals, one sentence per contrast, both figures."""
    from experiments.toy_factorial import ARMS, arm, contrasts, report

    finals = {  # (seed 100, seed 101) per arm, at the shared rate
        arm(None, False): (0.1, 0.5),
        arm(None, True): (0.2, 0.6),
        arm("eps_trace", False): (0.1, 0.3),
        arm("eps_trace", True): (0.4, 0.6),
        arm("eps_weight", False): (0.2, 0.2),
        arm("eps_weight", True): (0.3, 0.5),
    }

    def records(value, grad_norm):
        return [{"step": i + 1, "reward": value, "kl": 0.01, "grad_norm": grad_norm} for i in range(4)]

    logs = {
        "shared": {m: [records(v, 2.0 if m.loss_variant == "eps_trace" else 0.5) for v in finals[m]] for m in ARMS},
        "own": {m: [records(v + 0.05, 0.5) for v in finals[m]] for m in ARMS},
    }
    rates = {
        "shared": {m: 3e-4 for m in ARMS},
        "own": {m: 1e-4 if m.loss_variant == "eps_trace" else 3e-4 for m in ARMS},
    }
    pilot = {m: {1e-4: [0.2], 3e-4: [0.3]} for m in ARMS}
    design = dict(
        sft={"sft_steps": 200, "test_accuracy_t1": 0.3},
        pilot_seeds=[0],
        pilot_steps=4,
        pilot_last_steps=2,
        grid=[1e-4, 3e-4],
        seeds=[100, 101],
        steps=4,
        last_steps=2,
        started=time.time(),
    )
    assert report(tmp_path, pilot, rates, logs, design) == 0

    text = (tmp_path / "results.md").read_text()
    for tag in ("grpo", "grpo+adv_clamp_min=-0.1", "eps_trace-both-0.99+adv_clamp_min=none", "eps_weight-both-0.99"):
        assert f"| {tag} |" in text
    assert "## Every arm at the shared learning rate" in text and "## Every arm at its own learning rate" in text
    assert text.count("\n- ") == 2 * len(contrasts()) == 18
    shared = json.loads((tmp_path / "results.json").read_text())["analyses"]["shared"]["contrasts"]
    by_name = {row["name"]: row for row in shared}
    # clamp without traces: (0.2 − 0.1, 0.6 − 0.5) = (0.1, 0.1): every resample 0.1
    clamp = by_name["the clamp without traces"]["final_reward"]
    assert (clamp["estimate"], clamp["low"], clamp["high"]) == pytest.approx((0.1, 0.1, 0.1))
    # ε-trace traces with the clamp: (0.4 − 0.2, 0.6 − 0.6) = (0.2, 0.0); resample means 0.2, 0.1, 0.1, 0.0
    traces = by_name["ε-trace `both` λ 0.99 traces with the clamp"]["reward_area"]
    assert (traces["estimate"], traces["low"], traces["high"]) == pytest.approx((0.1, 0.0, 0.2))
    assert (
        "- The clamp without traces (grpo+adv_clamp_min=-0.1 − grpo): final reward +0.100 [+0.100, +0.100], "
        "established, higher" in text
    )
    # ε-weight's interaction: (0.3 − 0.2 − 0.2 + 0.1, 0.5 − 0.6 − 0.2 + 0.5) = (0, 0.2): an interval that touches 0
    assert "- ε-weight `both` λ 0.99 traces without the clamp" in text and "[+0.000, +0.200], not established" in text
    assert (
        "| eps_trace-both-0.99 | ε-trace | -0.1 | 0.0003 | 0.500 ± 0.141 [0.400, 0.600] | 0.500 ± 0.141 | "
        "0.0100 | 2.000 | 100% |" in text
    )
    for figure in ("reward_vs_step.png", "interaction.png"):
        assert (tmp_path / figure).stat().st_size > 20_000


@pytest.mark.slow
def test_factorial_study_tiny_end_to_end_and_resumes(tmp_path):
    """The whole study at a tiny scale (2 seeds, 2 steps, one pilot seed, two learning rates): pilot, main runs,
    report; the reported paired differences are those of the runs' own logs; a rerun trains nothing."""
    from experiments.reproduce_toy import main
    from experiments.toy_benchmark import Run, final_value
    from experiments.toy_factorial import arm

    argv = [
        "--study",
        "factorial",
        "--size",
        "small",
        "--seeds",
        "2",
        "--pilot_seeds",
        "1",
        "--lr_grid",
        "1e-4,1e-3",
        "--scale",
        "1",
        "--workers",
        "0",
        "--output_dir",
        str(tmp_path),
    ]
    assert main(argv) == 0
    study = tmp_path / "factorial"
    result = json.loads((study / "results.json").read_text())
    assert result["seeds"] == [100, 101] and result["pilot_seeds"] == [0]
    rates = result["learning_rates"]
    shared_rate = rates["shared"]["grpo"]
    assert shared_rate in (1e-4, 1e-3) and set(rates["shared"].values()) == {shared_rate}
    none, clamp = arm(None, False), arm(None, True)
    finals = {
        m: [final_value(Run(m, shared_rate, 2, s).records(tmp_path), "reward", 1) for s in (100, 101)]
        for m in (none, clamp)
    }
    row = next(r for r in result["analyses"]["shared"]["contrasts"] if r["name"] == "the clamp without traces")
    assert row["final_reward"]["per_seed"] == pytest.approx([b - a for a, b in zip(finals[none], finals[clamp])])
    assert "| eps_weight-both-0.99+adv_clamp_min=none |" in (study / "results.md").read_text()
    assert (study / "reward_vs_step.png").stat().st_size > 20_000 and (study / "interaction.png").is_file()
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.jsonl")}
    pairs = {(tag, rate) for by_arm in rates.values() for tag, rate in by_arm.items()}
    assert len(logs) == 6 * 2 + 2 * len(pairs), "pilot: 6 arms × 2 rates; main: 2 seeds per arm and rate"
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs, "finished runs are not trained again"


# The DAPO study


def test_recipe_style_is_read_from_the_style_file_and_overrides_the_toy_settings():
    """`dapo` is recipes/styles/dapo.yaml as grpo_lambda.configs.read_recipe reads it; `+key=value` changes one of its
    keys; a run's config lays the style over RL_SETTINGS and the method over both; a typo stops with one line."""
    from experiments.toy_benchmark import RL_SETTINGS, Run, style_settings
    from grpo_lambda.configs import read_recipe
    from grpo_lambda.layout import repo_root

    overlay = read_recipe(repo_root() / "recipes" / "styles" / "dapo.yaml")
    assert style_settings("dapo") == overlay and overlay["dynamic_sampling"] is True
    assert style_settings("dapo+dynamic_sampling=false") == {**overlay, "dynamic_sampling": False}
    assert style_settings("") == {}
    method = Method("eps_trace", "both", 0.99)
    config = Run(method, 3e-4, 10, 0, style="dapo").config()
    assert {key: config[key] for key in overlay} == overlay and config["beta"] != RL_SETTINGS["beta"]
    assert config["adv_clamp_min"] == -0.1 and config["learning_rate"] == 3e-4
    assert Run(method, 3e-4, 10, 0).config()["beta"] == RL_SETTINGS["beta"]
    folders = {Run(method, 3e-4, 10, 0, style=style).folder(Path("out")) for style in ("", "dapo", "dapo+x=1")}
    assert len(folders) == 3 and Path("out", "runs", method.tag, "lr0.0003_steps10", "seed0") in folders
    with pytest.raises(GRPOLambdaError, match="recipe style 'dapo2': no .*dapo2.yaml; styles: .*dapo"):
        style_settings("dapo2")
    with pytest.raises(GRPOLambdaError, match="'dynamic_sampeling=false' is not key=value for a key of dapo.yaml"):
        style_settings("dapo+dynamic_sampeling=false")


def test_round_rewards_keep_the_first_round():
    """With dynamic sampling a step calls the reward once per round. Two groups of 4: (1, 1, 1, 1) has one reward,
    (0, 1, 0, 0) varies: the first round's mean is 5/8 and half its groups have one reward; the second round is
    left out, and the next step starts afresh."""
    from experiments.toy_benchmark import RoundRewards

    def reward(completions, answer, **kwargs):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    reward.__name__ = "exact_match_reward"
    rounds = RoundRewards(reward, num_generations=4)
    assert rounds.__name__ == "exact_match_reward"
    assert rounds(completions=list("aaaabaaa"), answer=list("aaaaaacc")) == [1, 1, 1, 1, 0, 1, 0, 0]
    rounds(completions=list("aaaaaaaa"), answer=list("aaaaaaaa"))
    assert rounds.step_metrics() == {"toy/first_round_reward": 5 / 8, "toy/first_round_zero_std_groups": 0.5}
    assert rounds.step_metrics() == {}


def test_dapo_report_from_hand_made_logs(tmp_path):
    """Two seeds of 4 steps, final reward over the last 2. Every arm generates 100 tokens per step and has a constant
    reward, except GRPO on dapo (dynamic sampling): 150 tokens per step and rewards 0.1, 0.2, 0.3, 0.4. Against GRPO
    on dapo without dynamic sampling (reward 0.2): Δ final = (0.3 + 0.4)/2 − 0.2 = 0.15 on both seeds; tokens per step
    150/100 = +50 %; at equal generation the budget is the smaller total, 400 tokens, which the dynamic-sampling run
    reaches at its third step (150, 300, 450), so it is read over steps 2–3: (0.2 + 0.3)/2 − 0.2 = +0.05."""
    from experiments.toy_dapo import ARMS, arm, contrasts, report

    def records(rewards, tokens_per_step, dynamic=False):
        rows = []
        for i, value in enumerate(rewards):
            row = {"step": i + 1, "loss": 0.0, "reward": value, "toy/first_round_reward": value}
            row |= {"num_tokens": tokens_per_step * (i + 1), "grad_norm": 0.5, "toy/first_round_zero_std_groups": 0.25}
            if dynamic:
                row |= {"dynamic_sampling/rounds": 1.5, "dynamic_sampling/extra_generated_tokens": 50}
                row |= {"dynamic_sampling/groups_filled": 0}
            rows.append(row)
        return rows

    finals = {a: 0.2 for a in ARMS} | {arm("grpo_lambda", "paper"): 0.5, arm("grpo_lambda", "dapo"): 0.6}
    logs = {a: [records([finals[a]] * 4, 100), records([finals[a]] * 4, 100)] for a in ARMS}
    logs[arm("grpo", "dapo")] = [records([0.1, 0.2, 0.3, 0.4], 150, dynamic=True)] * 2
    picks = {a: 1e-4 for a in ARMS}
    pilot = {a: {1e-4: [0.2], 3e-4: [0.1]} for a in ARMS}
    design = dict(
        sft={"sft_steps": 200, "test_accuracy_t1": 0.3},
        pilot_seeds=[0],
        pilot_steps=4,
        pilot_last_steps=2,
        grid=[1e-4, 3e-4],
        seeds=[100, 101],
        steps=4,
        last_steps=2,
        started=time.time(),
        pilot_cpu_minutes=1.0,
        main_cpu_minutes=2.0,
    )
    assert report(tmp_path, pilot, picks, logs, design) == 0

    text = (tmp_path / "results.md").read_text()
    assert text.count("\n- ") == len(contrasts())
    rows = {row["name"]: row for row in json.loads((tmp_path / "results.json").read_text())["analysis"]["contrasts"]}
    dynamic = rows["dynamic sampling on vs off in dapo, GRPO"]
    assert dynamic["final_reward"]["per_seed"] == pytest.approx([0.15, 0.15])
    assert dynamic["tokens_per_step_ratio"]["estimate"] == pytest.approx(1.5)
    assert dynamic["final_reward_at_equal_tokens"]["per_seed"] == pytest.approx([0.05, 0.05])
    # GRPO-λ's gain: 0.5 − 0.2 on paper; 0.6 − 0.35 on dapo (GRPO's final there is the mean of 0.3 and 0.4)
    assert rows["GRPO-λ vs GRPO on paper"]["final_reward"]["estimate"] == pytest.approx(0.3)
    assert rows["GRPO-λ vs GRPO on dapo"]["final_reward"]["estimate"] == pytest.approx(0.6 - 0.35)
    interaction = rows["the interaction (GRPO-λ's gain on dapo minus on paper)"]
    assert interaction["final_reward"]["estimate"] == pytest.approx(0.25 - 0.3)
    assert "final_reward_at_equal_tokens" not in interaction
    assert (
        "| dynamic sampling on vs off in dapo, GRPO | +0.150 [+0.150, +0.150] established, higher | "
        "+0.050 [+0.050, +0.050] established, higher | +50 % [+50 %, +50 %] | +0.050 [+0.050, +0.050] established, "
        "higher |" in text
    )
    assert "| grpo @ dapo | 0.0001 | 0.350 ± 0.000 [0.350, 0.350] | 0.250 | 150 | 50 | 1.50 | 0.0 | 25% |" in text
    assert "| grpo @ paper | 0.0001 | 0.200 ± 0.000 [0.200, 0.200] | 0.200 | 100 | — | — | — | 25% |" in text
    for figure in ("reward_vs_step.png", "reward_vs_tokens.png"):
        assert (tmp_path / figure).stat().st_size > 20_000


@pytest.mark.slow
def test_dapo_study_small_end_to_end_and_resumes(tmp_path):
    """`make reproduce-toy ARGS="--study dapo"` at its smallest (2 seeds, 4 steps, a 2-step pilot at two rates): the
    overlay reaches the trainer (no KL with β = 0; dynamic sampling's metrics only where it is on, its cap from the
    style file: the 4-step SFT model never succeeds, so every group has one reward and every step hits the cap);
    the reported values are those of the runs' own logs; a rerun trains nothing."""
    from experiments.reproduce_toy import main
    from experiments.toy_benchmark import style_settings
    from experiments.toy_dapo import ARMS, FIRST_ROUND_REWARD, arm, reward_until

    argv = ["--study", "dapo", "--size", "small", "--seeds", "2", "--lr_grid", "1e-4,1e-3", "--workers", "0"]
    argv += ["--output_dir", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads((tmp_path / "dapo" / "results.json").read_text())
    assert result["seeds"] == [100, 101] and result["steps"] == 4 and result["pilot_steps"] == 2
    cap = style_settings("dapo")["dynamic_sampling_max_rounds"]
    for a in ARMS:
        rate = result["learning_rates"][a.tag]
        for seed in (100, 101):
            records = a.run(rate, 4, seed).records(tmp_path)
            assert len(records) == 4
            assert result["per_seed"][a.tag][str(seed)]["final_reward"] == reward_until(records, 3, 2)
            assert all(("kl" in r) == (a.recipe == "paper") for r in records)
            dynamic = [r.get("dynamic_sampling/rounds") for r in records]
            assert dynamic == ([cap] * 4 if a.recipe == "dapo" else [None] * 4)
            if a.recipe != "dapo":
                assert [r[FIRST_ROUND_REWARD] for r in records] == [r["reward"] for r in records]
    row = next(r for r in result["analysis"]["contrasts"] if r["name"] == "dynamic sampling on vs off in dapo, GRPO")
    assert row["tokens_per_step_ratio"]["estimate"] > cap / 2, "dynamic sampling generated its extra rounds"
    shown = (tmp_path / "dapo" / "results.md").read_text()
    assert f"| {arm('grpo_lambda', 'dapo without dynamic sampling').tag} |" in shown
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.jsonl")}
    assert len(logs) == 6 * 2 + 6 * 2, "pilot: 6 arms × 2 rates; main: 6 arms × 2 seeds"
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs, "finished runs are not trained again"
