"""The paper's benchmark tables (Table 1, Tables 3–6) as data, rendered in the paper's layout, beside your results.

    python -m grpo_lambda.tables                          # the paper's tables, from src/grpo_lambda/paper_results.yaml
    python -m grpo_lambda.tables --results data/ [--latex]

A `results.json` written by `grpo_lambda.evaluate` is matched to a cell of the paper by the run folder the recipes
name, `<model>/grpo/<dataset>_<run>`, found in its evaluated model path or in its own path. Cells you have run show
"paper / yours (Δ)". Table 1 averages over training sets: GRPO rows over the GRPO runs, GRPO-λ rows over the
GRPO-λ configuration the paper carried to that model (docs/evaluation.md explains how we read Table 1).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import yaml

BENCHMARKS = ("aime", "amc", "math", "minerva", "olympiad_bench")
TABLE1_COLUMNS = ("average", "aime", "amc", "math", "minerva", "olympiad_bench")
TABLE1_LABELS = ("Average", "AIME24", "AMC", "MATH", "Minerva", "Olympiad")
RUN_ROWS = ("aime", "math", "amc", "olympiad_bench", "minerva", "average")  # Tables 3–6 row order
RUN_ROW_LABELS = ("AIME", "MATH", "AMC", "OLBen", "MIN", "AVG")
DATASET_ORDER = ("math12k", "math-rl-16k", "gsm8k", "orz-57k")
# The GRPO-λ configuration whose mean over training sets is Table 1's GRPO-λ row (§4.1 and our reading of Table 1).
TABLE1_LAMBDA_RUN = {
    "Qwen/Qwen2.5-Math-1.5B-Instruct": "grpo-lambda-0.99-both-trace",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": "grpo-lambda-0.99-both-trace",
    "suayptalha/DeepSeek-R1-Distill-Llama-3B": "grpo-lambda-0.99-recent-trace",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": "grpo-lambda-0.99-recent-trace",
}
_RUN_FOLDER = re.compile(
    r"([^/]+)/grpo/([a-z0-9-]+?)_(grpo(?:-lambda-[0-9.]+-(?:both|recent)-(?:trace|weight))?)(?:/|$)"
)


def load_paper() -> dict:
    return yaml.safe_load((Path(__file__).with_name("paper_results.yaml")).read_text())


def collect_results(results_dir: str | Path, paper: dict) -> dict[tuple[str, str, str], dict]:
    """{(model id, dataset, run): {benchmark: accuracy, average}} from every results.json under `results_dir`."""
    by_tail = {model.split("/")[-1]: model for model in {row["model"] for row in paper["runs"]}}
    found = {}
    for path in sorted(Path(results_dir).rglob("results.json")):
        results = json.loads(path.read_text())
        for where in (str(results.get("model", "")), path.parent.as_posix()):
            match = _RUN_FOLDER.search(where)
            if match and match.group(1) in by_tail:
                scores = {b: v["accuracy"] for b, v in results["benchmarks"].items()}
                if set(BENCHMARKS) <= scores.keys():
                    scores["average"] = statistics.fmean(scores[b] for b in BENCHMARKS)
                found[(by_tail[match.group(1)], match.group(2), match.group(3))] = scores
                break
    return found


def _cell(paper_value: float | None, user_value: float | None) -> str:
    if user_value is None:
        return "" if paper_value is None else f"{paper_value:.3f}"
    if paper_value is None:
        return f"– / {user_value:.3f}"
    return f"{paper_value:.3f} / {user_value:.3f} ({user_value - paper_value:+.3f})"


def _render(header: list[str], rows: list[list[str]], latex: bool) -> str:
    if latex:
        lines = ["\\begin{tabular}{" + "l" * 2 + "c" * (len(header) - 2) + "}", "\\toprule"]
        lines += [" & ".join(header) + " \\\\", "\\midrule"]
        lines += [" & ".join(cell.replace("λ", "$\\lambda$") for cell in row) + " \\\\" for row in rows]
        return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table1_user_rows(user: dict, model: str) -> dict[str, dict]:
    """Your Table 1 rows: means over the training sets you ran, for GRPO and for TABLE1_LAMBDA_RUN[model]."""
    rows = {}
    for method, run in (("grpo", "grpo"), ("grpo-lambda", TABLE1_LAMBDA_RUN[model])):
        cells = [scores for (m, _, r), scores in user.items() if m == model and r == run]
        if cells:
            rows[method] = {
                k: statistics.fmean(c[k] for c in cells) for k in TABLE1_COLUMNS if all(k in c for c in cells)
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
    if run == "grpo":
        return "GRPO"
    _, _, lam, style, update = run.split("-")
    return f"{style} ε-{update} λ={lam}"


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
                mine = [user.get((model, dataset, run), {}).get(key) for run in runs]
                rows.append([dataset, label, *[_cell(cells[run][key], m) for run, m in zip(runs, mine, strict=True)]])
            blocks.append(_render(["Trained on", "", *[_run_label(run) for run in runs]], rows, latex))
    return "\n\n".join(blocks)


def render_all_runs(results_dir: str | Path, latex: bool = False) -> str:
    """Every results.json under `results_dir`, one row per evaluated run (its folder relative to `results_dir`),
    whether or not it matches a cell of the paper: the summary of a sweep of your own."""
    root = Path(results_dir)
    found = [(path, json.loads(path.read_text())) for path in sorted(root.rglob("results.json"))]
    benchmarks = list(dict.fromkeys(b for _, results in found for b in results["benchmarks"]))
    rows = []
    for path, results in found:
        run = path.parent.relative_to(root).as_posix().removesuffix("/eval")
        scores = [results["benchmarks"].get(b, {}).get("accuracy") for b in benchmarks]
        average = results.get("average")
        rows.append(
            [run, *["" if v is None else f"{v:.3f}" for v in scores], "" if average is None else f"{average:.3f}"]
        )
    return _render(["Run", *benchmarks, "Average"], rows, latex)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None, help="Folder searched recursively for results.json files.")
    parser.add_argument("--latex", action="store_true", help="LaTeX tabulars instead of Markdown.")
    parser.add_argument("--output", default=None, help="Also write the tables to this file.")
    args = parser.parse_args(argv)
    paper = load_paper()
    user = collect_results(args.results, paper) if args.results else None
    if args.results and not user:
        print(f"no results.json under {args.results} matches a run of the paper (<model>/grpo/<dataset>_<run>)")
    text = "Table 1\n\n" + render_table1(paper, user, args.latex) + "\n\n" + render_run_tables(paper, user, args.latex)
    if args.results:
        text += f"\n\nEvery evaluated run under {args.results}\n\n" + render_all_runs(args.results, args.latex)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
