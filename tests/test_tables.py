"""The paper's tables as data: transcription checks, the paper's own averages, and your results beside them."""

import json
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.suite import BENCHMARKS
from grpo_lambda.evaluation.tables import (
    PAPER_PROBLEMS,
    RUN_ROW_LABELS,
    collect_results,
    load_paper,
    main,
    paper_interval,
    render_run_tables,
    render_table1,
)
from grpo_lambda.methods import Method

PAPER = load_paper()
PAPER_TEXT = REPO_ROOT.parent / "shared" / "paper" / "grpo_lambda_paper.txt"

# Where the paper's AVG is not the mean of its five benchmarks (to ±0.001): printed value, mean of the five.
INCONSISTENT_RUN_AVERAGES = {
    ("Qwen2.5-Math-1.5B-Instruct", "orz-57k", "eps_weight-both-0.99"): (0.378, 0.3716),
    ("Qwen2.5-Math-1.5B-Instruct", "orz-57k", "eps_weight-recent-0.98"): (0.276, 0.2876),
    ("Qwen2.5-Math-1.5B-Instruct", "orz-57k", "eps_weight-recent-0.99"): (0.323, 0.3288),
    ("DeepSeek-R1-Distill-Qwen-1.5B", "orz-57k", "eps_trace-recent-0.98"): (0.366, 0.3678),
    ("DeepSeek-R1-Distill-Llama-3B", "gsm8k", "eps_trace-both-0.99"): (0.277, 0.229),
}
INCONSISTENT_TABLE1_AVERAGES = {("DeepSeek-R1-Distill-Llama-3B", "grpo"): (0.142, 0.1298)}


def mean5(row):
    return statistics.fmean(row[b] for b in BENCHMARKS)


def test_the_stored_runs_are_the_grid():
    from grpo_lambda.jobs.recipes import expand_grid, load_grid

    grid = {(r.model_id, r.dataset, Method.from_tag(r.tag).tag) for r in expand_grid(load_grid(REPO_ROOT))}
    stored = {(r["model"], r["dataset"], r["run"]) for r in PAPER["runs"]}
    assert stored == grid and len(stored) == 92


def test_paper_averages_are_means_of_five_benchmarks_except_where_the_paper_is_not():
    off = {
        (r["model"].split("/")[-1], r["dataset"], r["run"]): (r["average"], round(mean5(r), 4))
        for r in PAPER["runs"]
        if abs(mean5(r) - r["average"]) > 0.001 + 1e-9
    }
    assert off == INCONSISTENT_RUN_AVERAGES
    off1 = {
        (r["model"].split("/")[-1], r["method"]): (r["average"], round(mean5(r), 4))
        for r in PAPER["table1"]
        if abs(mean5(r) - r["average"]) > 0.001 + 1e-9
    }
    assert off1 == INCONSISTENT_TABLE1_AVERAGES


def test_table_1_grpo_rows_are_means_over_training_sets():
    """Our reading of Table 1 (docs/evaluation.md): GRPO = mean over the four training sets of Tables 3–6's GRPO."""
    for row in (r for r in PAPER["table1"] if r["method"] == "grpo"):
        runs = [r for r in PAPER["runs"] if r["model"] == row["model"] and r["run"] == "grpo"]
        for key in ("average", *BENCHMARKS):
            mean = statistics.fmean(r[key] for r in runs)
            if row["model"].endswith("Llama-3B") and key in ("amc", "math"):
                # The paper's value is the mean over gsm8k, orz-57k and math-rl-16k only (math12k left out).
                mean = statistics.fmean(r[key] for r in runs if r["dataset"] != "math12k")
            assert row[key] == pytest.approx(mean, abs=6e-4), (row["model"], key)


def test_table_1_lambda_rows_for_3b_and_7b_are_the_carried_configuration():
    for row in (
        r for r in PAPER["table1"] if r["method"] == "grpo-lambda" and not r["model"].endswith("1.5B-Instruct")
    ):
        if "1.5B" in row["model"]:
            continue
        runs = [r for r in PAPER["runs"] if r["model"] == row["model"] and r["run"] == "eps_trace-recent-0.99"]
        for key in ("average", *BENCHMARKS):
            assert row[key] == pytest.approx(statistics.fmean(r[key] for r in runs), abs=6e-4), (row["model"], key)


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text is not beside the repository")
def test_rendered_table_1_reproduces_the_paper_exactly():
    text = PAPER_TEXT.read_text()
    start = text.index("Model Method Evaluation benchmark (accuracy)")
    paper_rows = re.findall(r"^.*?((?:\d\.\d{3} ?){6})$", text[start : start + 800], flags=re.M)
    rendered = render_table1(PAPER)
    rendered_rows = [" ".join(line.split(" | ")[2:]).rstrip(" |") for line in rendered.splitlines()[2:]]
    assert [r.strip() for r in paper_rows] == rendered_rows


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="the paper's text is not beside the repository")
def test_every_stored_run_value_appears_in_the_paper_rows():
    text = PAPER_TEXT.read_text()
    labels = {
        "aime": "AIME",
        "math": "MATH",
        "amc": "AMC",
        "olympiad_bench": "OLBen",
        "minerva": "MIN",
        "average": "AVG",
    }
    for key, label in labels.items():
        printed = [
            f"{float(v):.3f}" for line in re.findall(rf"^{label} ([\d. ]+)$", text, flags=re.M) for v in line.split()
        ]
        stored = [f"{r[key]:.3f}" for r in PAPER["runs"]]
        assert sorted(stored) == sorted(printed), label


def write_results(folder, accuracies, corrected_shift=0.01):
    """A results.json as grpo_lambda.evaluation.evaluate writes it: the paper grade's accuracies, the corrected grade's
    `corrected_shift` higher."""
    folder.mkdir(parents=True)
    benchmarks = {
        b: {"n": 1, "paper": {"accuracy": a}, "corrected": {"accuracy": a + corrected_shift}}
        for b, a in zip(BENCHMARKS, accuracies, strict=True)
    }
    average = {"paper": statistics.fmean(accuracies), "corrected": statistics.fmean(accuracies) + corrected_shift}
    (folder / "results.json").write_text(
        json.dumps({"model": "checkpoints/x", "benchmarks": benchmarks, "average": average})
    )


def test_your_results_beside_the_papers(tmp_path, capsys):
    write_results(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval", [0.1, 0.4, 0.7, 0.2, 0.3])
    write_results(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/gsm8k_grpo/eval", [0.0, 0.2, 0.5, 0.2, 0.1])
    write_results(
        tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_eps_trace-both-0.99/eval", [0.2, 0.5, 0.8, 0.3, 0.4]
    )
    write_results(tmp_path / "unrelated/eval", [1, 1, 1, 1, 1])
    # a run of another recipe (RECIPE_STYLE=dapo) is not the paper's cell, though its folder names one
    write_results(tmp_path / "style-dapo/Qwen2.5-Math-1.5B-Instruct/grpo/gsm8k_grpo/eval", [1, 1, 1, 1, 1])
    user = collect_results(tmp_path, PAPER)
    assert set(user) == {
        ("Qwen/Qwen2.5-Math-1.5B-Instruct", "math12k", "grpo"),
        ("Qwen/Qwen2.5-Math-1.5B-Instruct", "gsm8k", "grpo"),
        ("Qwen/Qwen2.5-Math-1.5B-Instruct", "math12k", "eps_trace-both-0.99"),
    }
    table1 = render_table1(PAPER, user)
    grpo_row = next(line for line in table1.splitlines() if "Qwen2.5" in line and "| GRPO |" in line)
    assert "0.067 / 0.050 (-0.017) [0.060]" in grpo_row  # AIME: mean of 0.1 and 0.0 over the two training sets
    runs = render_run_tables(PAPER, user)
    assert "0.704 / 0.700 (-0.004) [0.710]" in runs  # math12k GRPO, MATH
    assert "0.756 / 0.800 (+0.044) [0.810]" in runs  # math12k λ 0.99 both ε-trace, MATH
    assert "| both ε-trace λ=0.99 |" in runs
    assert main(["--results", str(tmp_path), "--latex"]) == 0
    latex = capsys.readouterr().out
    assert "\\begin{tabular}" in latex and "$\\lambda$" in latex
    assert "0.400 / 0.410" in latex  # every run, paper / corrected: math12k GRPO's AMC


def test_results_without_both_grades_ask_for_a_regrade(tmp_path, capsys):
    folder = tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval"
    folder.mkdir(parents=True)
    per = {b: {"accuracy": 0.5, "n": 1} for b in BENCHMARKS}
    (folder / "results.json").write_text(json.dumps({"model": "x", "benchmarks": per, "average": 0.5}))
    assert collect_results(tmp_path, PAPER) == {}
    assert f"make regrade RESULTS={folder}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_results_folder_without_results_stops_with_one_line(tmp_path, kind):
    """A mistyped RESULTS= must not print the paper's tables alone as if nothing had been run."""
    folder = tmp_path / "evals"
    if kind == "empty":
        (folder / "run/eval").mkdir(parents=True)
        (folder / "run/eval/samples.jsonl").write_text("")
    lacks = "does not exist" if kind == "missing" else "holds no results.json"
    with pytest.raises(GRPOLambdaError, match=f"{re.escape(str(folder))} {lacks}") as raised:
        main(["--results", str(folder)])
    assert "\n" not in str(raised.value)
    command = [sys.executable, "-m", "grpo_lambda.evaluation.tables", "--results", str(folder)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"grpo_lambda: {raised.value}"]


@pytest.mark.parametrize("text", ['{"model": "x", "benchmarks": {"aime": ', "[1, 2]", "\xff\xfe"])
def test_a_damaged_results_json_is_refused_with_its_name(tmp_path, text):
    write_results(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval", [0.1, 0.4, 0.7, 0.2, 0.3])
    damaged = tmp_path / "other/eval/results.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(text.encode("latin-1"))
    with pytest.raises(GRPOLambdaError, match=re.escape(str(damaged))) as raised:
        main(["--results", str(tmp_path)])
    assert "\n" not in str(raised.value)


def results_from_answers(folder, solved: dict[str, int]):
    """A results.json as `make evaluate` writes it for greedy answers of which `solved[b]` of the benchmark's
    problems are correct: accuracies with stats' intervals, the average with its macro interval."""
    answers = {b: np.arange(n) < solved[b] for b, n in PAPER_PROBLEMS.items()}
    benchmarks = {
        b: {
            "n": len(a),
            **{
                g: {"accuracy": a.mean(), "interval": list(stats.accuracy_interval(a))} for g in ("paper", "corrected")
            },
        }
        for b, a in answers.items()
    }
    average = statistics.fmean(a.mean() for a in answers.values())
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "model": "checkpoints/x",
                "benchmarks": benchmarks,
                "average": {"paper": average, "corrected": average},
                "average_interval": {g: list(stats.macro_interval(answers)) for g in ("paper", "corrected")},
            }
        )
    )


# Benchmark values of Tables 3–6 that are no count of the benchmark's problems (k/n) to the 3 decimals printed.
NOT_COUNTS = {
    ("Qwen2.5-Math-1.5B-Instruct", "orz-57k", "grpo", "minerva"): 0.226,
    ("Qwen2.5-Math-1.5B-Instruct", "orz-57k", "eps_trace-both-0.99", "amc"): 0.35,
    ("DeepSeek-R1-Distill-Qwen-1.5B", "orz-57k", "grpo", "amc"): 0.4,
    ("DeepSeek-R1-Distill-Qwen-1.5B", "orz-57k", "eps_trace-both-0.98", "minerva"): 0.186,
    ("DeepSeek-R1-Distill-Qwen-1.5B", "orz-57k", "eps_weight-both-0.98", "minerva"): 0.22,
}


def test_the_paper_numbers_are_counts_of_the_shipped_suites_problems():
    """The benchmark values of Tables 3–6 are k/n of the shipped suite's n problems to the 3 decimals printed (all
    but NOT_COUNTS): the n behind the paper's numbers, which the ✓/✗ marks use."""
    from grpo_lambda.evaluation.suite import DEFAULT_SUITE

    for name, n in PAPER_PROBLEMS.items():
        assert len((DEFAULT_SUITE / f"{name}.jsonl").read_text().splitlines()) == n
    off = {
        (row["model"].split("/")[-1], row["dataset"], row["run"], name): row[name]
        for row in PAPER["runs"]
        for name, n in PAPER_PROBLEMS.items()
        if abs(round(row[name] * n) / n - row[name]) > 0.0005 + 1e-9
    }
    assert off == NOT_COUNTS


def cell_marks(runs: str, dataset: str) -> dict[str, str | None]:
    """{row key: ✓, ✗ or None} of the GRPO column of `dataset` in render_run_tables' text."""
    marks = {}
    for key, label in zip(
        ("aime", "math", "amc", "olympiad_bench", "minerva", "average"), RUN_ROW_LABELS, strict=True
    ):
        line = next(line for line in runs.splitlines() if line.startswith(f"| {dataset} | {label} |"))
        cell = line.split("|")[3]
        marks[key] = "✓" if "✓" in cell else "✗" if "✗" in cell else None
    return marks


def test_each_of_your_numbers_says_whether_it_differs_from_the_papers_more_than_the_problems_explain(tmp_path):
    """✓/✗ is the test of two independent proportions on n problems each (Newcombe's interval of the difference,
    statsmodels' "newcomb", holds 0 or not), not "the paper's value inside your interval", which took the paper's
    number for exact; the average's mark is the same test of two macro averages."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    paper = next(r for r in PAPER["runs"] if r["dataset"] == "math12k" and r["run"] == "grpo")
    paper_solved = {b: round(paper[b] * n) for b, n in PAPER_PROBLEMS.items()}  # aime 2, amc 32, math 352, ...
    # Against the paper's 2/30, 32/83, 352/500, 52/272, 219/675. Minerva 70/272 is where the old mark (the paper's
    # value inside your interval) said ✗: the paper's 0.191 lies outside your [0.209, 0.312], but 0.191 is itself
    # 52 of 272 problems, and the difference's interval [−0.004, +0.136] holds 0.
    ours = {"aime": 2, "amc": 40, "math": 320, "minerva": 70, "olympiad_bench": 240}
    results_from_answers(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval", ours)
    marks = cell_marks(render_run_tables(PAPER, collect_results(tmp_path, PAPER)), "math12k")
    for name, n in PAPER_PROBLEMS.items():
        low, high = confint_proportions_2indep(ours[name], n, paper_solved[name], n, method="newcomb")
        assert marks[name] == ("✓" if low <= 0 <= high else "✗"), name
    assert [marks[b] for b in PAPER_PROBLEMS] == ["✓", "✓", "✗", "✓", "✓"]
    assert marks["average"] == "✓"  # 0.362 vs the paper's 0.334
    lower = {b: round(0.6 * s) for b, s in paper_solved.items()}  # 40 % fewer problems solved everywhere
    results_from_answers(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/gsm8k_grpo/eval", lower)
    assert cell_marks(render_run_tables(PAPER, collect_results(tmp_path, PAPER)), "gsm8k")["average"] == "✗"


def test_a_results_json_without_intervals_gets_no_mark(tmp_path):
    """A results.json written before intervals existed: your number beside the paper's, no ✓/✗."""
    write_results(tmp_path / "Qwen2.5-Math-1.5B-Instruct/grpo/math12k_grpo/eval", [0.1, 0.4, 0.7, 0.2, 0.3])
    runs = render_run_tables(PAPER, collect_results(tmp_path, PAPER))
    amc = next(line for line in runs.splitlines() if line.startswith("| math12k | AMC"))
    assert "0.400 (" in amc and not {"✓", "✗"} & set(amc)


def test_the_papers_interval_is_wilsons_on_its_problems_about_its_printed_value():
    from statsmodels.stats.proportion import proportion_confint

    paper = next(r for r in PAPER["runs"] if r["dataset"] == "math12k" and r["run"] == "grpo")
    value, low, high = paper_interval(paper, "minerva")  # 0.191, 52 of 272 (0.1912)
    wilson = np.array(proportion_confint(52, 272, alpha=0.05, method="wilson"))
    assert value == 0.191 and (low, high) == pytest.approx(wilson + 0.191 - 52 / 272, abs=1e-12)
