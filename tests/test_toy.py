"""The credit_echo task (generator, verifier, dataset and reward wiring) and `make reproduce-toy` at its smallest."""

import json
import random

import pytest

from grpo_lambda.data import load_problem_dataset
from grpo_lambda.rewards import get_reward_funcs
from grpo_lambda.toy import ALPHABET, credit_echo_dataset, credit_echo_problem, is_correct


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
    assert is_correct(completion, "c b g ; c b g") is correct


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


def test_reproduce_toy_small_writes_table_plot_and_logs_and_resumes(tmp_path, capsys):
    """`make reproduce-toy` at its smallest: SFT → two methods × one seed → table, PNG, per-step logs; a rerun
    trains nothing and rewrites the same table."""
    from grpo_lambda.toy_benchmark import main

    argv = ["--size", "small", "--methods", "grpo,eps-trace-both-λ0.99", "--no_lambda_098", "--workers", "0",
            "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    table = (tmp_path / "results.md").read_text()
    assert "| grpo |" in table and "| eps-trace-both-λ0.99 |" in table
    assert (tmp_path / "reward_vs_step.png").stat().st_size > 10_000
    for method in ("grpo", "eps-trace-both-λ0.99"):
        run = tmp_path / "runs" / method / "seed0"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "reward" in r]
        assert len(steps) == 2 and all("lemma1/bound_mean" in r and "kl" in r for r in steps)
        assert (run / "done.json").is_file()
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.jsonl")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs, "finished runs are not trained again"
    assert (tmp_path / "results.md").read_text().split("\n", 1)[1] == table.split("\n", 1)[1]


def test_default_methods_include_the_clamp_control():
    """The comparison's reading rests on grpo+clamp: GRPO with GRPO-λ's clamp and nothing else of GRPO-λ."""
    from grpo_lambda.toy_benchmark import GRPO_LAMBDA_SETTINGS, first_methods

    methods = {m.name: m.overrides for m in first_methods()}
    assert list(methods) == ["grpo", "grpo+eos_bound", "grpo+clamp", "eps-trace-both-λ0.99",
                             "eps-trace-recent-λ0.99", "eps-weight-both-λ0.99", "eps-weight-recent-λ0.99"]  # fmt: skip
    assert methods["grpo+clamp"] == {**methods["grpo"], "adv_clamp_min": GRPO_LAMBDA_SETTINGS["adv_clamp_min"]}
    for name, overrides in methods.items():
        traced = name.startswith("eps-")
        assert (overrides.get("adv_clamp_min") == -0.1) == (traced or name == "grpo+clamp")
