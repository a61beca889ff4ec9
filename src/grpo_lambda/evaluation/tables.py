"""The paper's benchmark tables (Table 1, Tables 3–6) as data, rendered in the paper's layout, beside your results.

    python -m grpo_lambda.evaluation.tables                          # the paper's tables, from src/grpo_lambda/paper_results.yaml
    python -m grpo_lambda.evaluation.tables --results data/ [--latex]

A `results.json` written by `grpo_lambda.evaluation.evaluate` is matched to a cell of the paper by the run folder the recipes
name, `<model>/grpo/<dataset>_<method tag>` (grpo_lambda.methods.RunFolder), found in its evaluated model path or in
its own path. Cells you have run show "paper / yours (Δ) [corrected]": yours under the `paper` grade (the paper's own
grader, like for like), the difference, and yours under the `corrected` grade. Table 1 averages over training sets:
GRPO rows over the GRPO runs, GRPO-λ rows over the GRPO-λ configuration the paper carried to that model
(docs/evaluation.md explains how we read Table 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation import stats
from grpo_lambda.evaluation.config import DEFAULT_PROTOCOL, matching_protocol, protocol_differences
from grpo_lambda.evaluation.grades import GRADES
from grpo_lambda.evaluation.store import read_results
from grpo_lambda.evaluation.suite import BENCHMARKS
from grpo_lambda.methods import Method, RunFolder
from grpo_lambda.records import replace_file

# The paper's protocol (understand-r1-zero: every problem, greedy, 3 000 new tokens in a 4 096-token context): the
# evaluation's default, config.PROTOCOLS[DEFAULT_PROTOCOL]; a results.json evaluated otherwise is left out of the
# paper's cells (another protocol's avg@k beside the paper's greedy accuracies would mislead).
PAPER_PROTOCOL = DEFAULT_PROTOCOL
TABLE1_COLUMNS = ("average", *BENCHMARKS)
TABLE1_LABELS = ("Average", "AIME24", "AMC", "MATH", "Minerva", "Olympiad")
RUN_ROWS = ("aime", "math", "amc", "olympiad_bench", "minerva", "average")  # Tables 3–6 row order
RUN_ROW_LABELS = ("AIME", "MATH", "AMC", "OLBen", "MIN", "AVG")
DATASET_ORDER = ("math12k", "math-rl-16k", "gsm8k", "orz-57k")
# The GRPO-λ configuration whose mean over training sets is Table 1's GRPO-λ row (§4.1 and our reading of Table 1).
TABLE1_LAMBDA_RUN = {
    "Qwen/Qwen2.5-Math-1.5B-Instruct": "eps_trace-both-0.99",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "eps_trace-both-0.99",
    "suayptalha/DeepSeek-R1-Distill-Llama-3B": "eps_trace-recent-0.99",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": "eps_trace-recent-0.99",
}
# The problems behind each of the paper's numbers: understand-r1-zero's suite, the one shipped here (tested).
PAPER_PROBLEMS = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675}
CELL_LEGEND = (
    "Cells: paper / yours under the paper's grader (difference, then ✓ where it is within what drawing the problems "
    "explains — the 95 % interval of yours minus the paper's, each an accuracy on its benchmark's problems with its "
    "own sampling error, contains 0 — and ✗ where it is not; Table 1's means over training sets are not marked) "
    "[yours under the corrected grade]."
)


def load_paper() -> dict:
    return yaml.safe_load((Path(__file__).with_name("paper_results.yaml")).read_text())


def grade_scores(results: dict) -> dict[str, dict[str, float]] | None:
    """{grade: {benchmark: accuracy, "average": mean over the five}} of a results.json; None for one written
    before both grades existed (`make regrade RESULTS=<its folder>` updates it)."""
    per = results["benchmarks"]
    if not all(grade in values for values in per.values() for grade in GRADES):
        return None
    scores = {}
    for grade in GRADES:
        scores[grade] = {b: v[grade]["accuracy"] for b, v in per.items()}
        if set(BENCHMARKS) <= scores[grade].keys():
            scores[grade]["average"] = statistics.fmean(scores[grade][b] for b in BENCHMARKS)
    # the paper grade's 95 % intervals (results.json written before intervals existed has none: no ✓/✗ then)
    scores["interval"] = {b: v["paper"]["interval"] for b, v in per.items() if v["paper"].get("interval")}
    average = (results.get("average_interval") or {}).get("paper")
    if average and set(per) == set(BENCHMARKS):  # the macro interval of exactly the paper's five benchmarks
        scores["interval"]["average"] = average
    return scores


def results_files(results_dir: str | Path) -> list[Path]:
    """Every results.json under `results_dir`, in path order; a folder that is missing or holds none is an error
    (a mistyped RESULTS= would otherwise print the paper's tables alone, as if nothing had been run)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise GRPOLambdaError(
            f"the results folder {results_dir} does not exist; give the folder your evaluations wrote into."
        )
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise GRPOLambdaError(
            f"the results folder {results_dir} holds no results.json; give the folder your evaluations wrote into "
            "(make evaluate writes OUTPUT/results.json)."
        )
    return paths


def collect_results(results_dir: str | Path, paper: dict) -> dict[tuple[str, str, str], dict]:
    """{(model id, dataset, method tag): {grade: {benchmark: accuracy, average}}} from every results.json under
    `results_dir` that belongs to a run of the paper's grid."""
    by_tail = {model.split("/")[-1]: model for model in {row["model"] for row in paper["runs"]}}
    found = {}
    for path in results_files(results_dir):
        results = read_results(path)
        for where in (str(results.get("model", "")), path.parent.as_posix()):
            run = RunFolder.find(where)
            if run and run.model in by_tail:
                scores = grade_scores(results)
                config = results.get("config") or {}
                off = [f"limit={config['limit']}"] if config.get("limit") is not None else []
                off += protocol_differences(config, PAPER_PROTOCOL)  # a smoke run, sampling, other token limits
                if run.style:  # another recipe than the paper's (recipes/styles/): not the paper's cell
                    print(f"{path}: trained with the {run.style} recipe style, not the paper's recipe: left out")
                elif off:
                    other = matching_protocol(config)
                    named = f"the {other} protocol: " if other else ""
                    print(f"{path}: not the paper's protocol ({named}{', '.join(off)}): left out")
                elif scores is None:
                    print(
                        f"{path}: written without the paper and corrected grades; make regrade RESULTS={path.parent}"
                    )
                else:
                    found[(by_tail[run.model], run.dataset, run.method.tag)] = scores
                break
    return found


def paper_interval(paper_row: dict, key: str) -> tuple[float, float, float] | None:
    """(value, low, high): the paper's value of `key` (a benchmark or "average") in `paper_row` with its 95 %
    interval over its problems — the paper's accuracy on PAPER_PROBLEMS[b] problems is round(value·n) of n correct,
    and its interval is stats.accuracy_interval (stats.macro_interval for the average) of those answers, set about
    the printed value. None where the row lacks a benchmark."""
    if any(paper_row.get(b) is None for b in (BENCHMARKS if key == "average" else (key,))):
        return None
    answers = {b: np.arange(n) < round(paper_row[b] * n) for b, n in PAPER_PROBLEMS.items()}
    if key == "average":
        low, high = stats.macro_interval(answers)
        centre = statistics.fmean(a.mean() for a in answers.values())
    else:
        low, high = stats.accuracy_interval(answers[key])
        centre = answers[key].mean()
    value = paper_row[key]
    return value, value - (centre - low), value + (high - centre)


def agrees_with_paper(paper: tuple[float, float, float], ours: float, interval: list[float]) -> bool:
    """Whether yours and the paper's differ by no more than drawing the problems explains: the 95 % interval of
    yours − the paper's, two estimates with their own intervals (stats.independent_difference, Newcombe's), holds 0.
    Both were measured on the same problems, so this counts more noise than there is between them: a ✗ is a real
    disagreement (or another grader, template or decoding), a ✓ only that the problems cannot tell."""
    _, low, high = stats.independent_difference(paper, (ours, *interval))
    return low <= 0 <= high


def _cell(paper_value: float | None, mine: dict | None, paper: tuple[float, float, float] | None = None) -> str:
    """The cell "paper / yours (Δ ✓|✗) [corrected]"; `mine` is {grade: value, "interval": (low, high) | None} or
    None, `paper` the paper's `paper_interval` (no mark without it or without your interval)."""
    if not mine or mine.get("paper") is None:
        return "" if paper_value is None else f"{paper_value:.3f}"
    ours, corrected, interval = mine["paper"], mine.get("corrected"), mine.get("interval")
    if paper_value is None:
        text = f"– / {ours:.3f}"
    else:
        mark = "" if not (interval and paper) else (" ✓" if agrees_with_paper(paper, ours, interval) else " ✗")
        text = f"{paper_value:.3f} / {ours:.3f} ({ours - paper_value:+.3f}{mark})"
    return text + ("" if corrected is None else f" [{corrected:.3f}]")


def _render(header: list[str], rows: list[list[str]], latex: bool) -> str:
    if latex:
        lines = ["\\begin{tabular}{" + "l" * 2 + "c" * (len(header) - 2) + "}", "\\toprule"]
        lines += [" & ".join(header) + " \\\\", "\\midrule"]
        lines += [" & ".join(cell.replace("λ", "$\\lambda$") for cell in row) + " \\\\" for row in rows]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table1_user_rows(user: dict, model: str) -> dict[str, dict]:
    """Your Table 1 rows: {method: {column: {grade: mean}}}, means over the training sets you ran, for GRPO and for
    TABLE1_LAMBDA_RUN[model]."""
    rows = {}
    for method, run in (("grpo", "grpo"), ("grpo-lambda", TABLE1_LAMBDA_RUN[model])):
        cells = [scores for (m, _, r), scores in user.items() if m == model and r == run]
        if cells:
            rows[method] = {
                key: {grade: statistics.fmean(c[grade][key] for c in cells) for grade in GRADES}
                for key in TABLE1_COLUMNS
                if all(key in c[grade] for c in cells for grade in GRADES)
            }
    return rows


def render_table1(paper: dict, user: dict | None = None, latex: bool = False) -> str:
    rows = []
    for entry in paper["table1"]:
        mine = table1_user_rows(user, entry["model"]).get(entry["method"], {}) if user else {}
        method = "GRPO" if entry["method"] == "grpo" else "GRPO-λ"
        rows.append([entry["model"].split("/")[-1], method, *[_cell(entry[k], mine.get(k)) for k in TABLE1_COLUMNS]])
    return _render(["Model", "Method", *TABLE1_LABELS], rows, latex)


def _run_label(run: str) -> str:
    method = Method.from_tag(run)
    if method.loss_variant == "grpo":
        return "GRPO"
    return f"{method.trace_style} ε-{method.loss_variant.removeprefix('eps_')} λ={method.trace_lambda:g}"


def render_run_tables(paper: dict, user: dict | None = None, latex: bool = False) -> str:
    """Tables 3–6: per model, per training set, benchmarks down and runs across."""
    user = user or {}
    blocks = []
    for table in sorted({row["table"] for row in paper["runs"]}):
        entries = [row for row in paper["runs"] if row["table"] == table]
        model = entries[0]["model"]
        runs = list(dict.fromkeys(row["run"] for row in entries))
        blocks.append(f"Table {table}: {model}")
        for dataset in [d for d in DATASET_ORDER if any(row["dataset"] == d for row in entries)]:
            cells = {row["run"]: row for row in entries if row["dataset"] == dataset}
            rows = []
            for key, label in zip(RUN_ROWS, RUN_ROW_LABELS, strict=True):
                mine = [
                    {**{grade: scores[grade].get(key) for grade in GRADES}, "interval": scores["interval"].get(key)}
                    if (scores := user.get((model, dataset, run)))
                    else None
                    for run in runs
                ]
                rows.append(
                    [
                        dataset,
                        label,
                        *[
                            _cell(cells[run][key], m, paper_interval(cells[run], key) if m else None)
                            for run, m in zip(runs, mine, strict=True)
                        ],
                    ]
                )
            blocks.append(_render(["Trained on", "", *[_run_label(run) for run in runs]], rows, latex))
    return "\n\n".join(blocks)


def render_all_runs(results_dir: str | Path, latex: bool = False) -> str:
    """Every results.json under `results_dir`, one row per evaluated run (its folder relative to `results_dir`),
    whether or not it matches a cell of the paper: the summary of a sweep of your own. Cells: paper / corrected."""
    root = Path(results_dir)
    found = [(path, read_results(path)) for path in results_files(root)]
    present = {b for _, results in found for b in results["benchmarks"]}
    benchmarks = [b for b in BENCHMARKS if b in present] + sorted(present - set(BENCHMARKS))
    rows = []
    for path, results in found:
        run = path.parent.relative_to(root).as_posix().removesuffix("/eval")
        scores = grade_scores(results)
        if scores is None:
            rows.append([run, *["" for _ in benchmarks], f"make regrade RESULTS={path.parent}"])
            continue
        cells = [" / ".join(f"{scores[g][b]:.3f}" for g in GRADES) if b in scores["paper"] else "" for b in benchmarks]
        average = results["average"]
        rows.append([run, *cells, " / ".join(f"{average[g]:.3f}" for g in GRADES)])
    return _render(["Run", *benchmarks, "Average"], rows, latex)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None, help="Folder searched recursively for results.json files.")
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars instead of Markdown.")
    parser.add_argument("--output_dir", default=None, help="Also write the tables to results.md (.tex) in it.")
    args = parser.parse_args(argv)
    paper = load_paper()
    user = collect_results(args.results, paper) if args.results else None
    if args.results and not user:
        print(f"no results.json under {args.results} matches a run of the paper (<model>/grpo/<dataset>_<tag>)")
    text = "Table 1\n\n" + render_table1(paper, user, args.latex) + "\n\n" + render_run_tables(paper, user, args.latex)
    if user:
        text = CELL_LEGEND + "\n\n" + text
    if args.results:
        text += f"\n\nEvery evaluated run under {args.results} (paper / corrected grade)\n\n"
        text += render_all_runs(args.results, args.latex)
    print(text)
    if args.output_dir:
        output = Path(args.output_dir) / ("results.tex" if args.latex else "results.md")
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_file(output, text + "\n")
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
