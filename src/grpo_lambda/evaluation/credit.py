"""The credit picture: one completion with every token coloured by the weight its log-probability gets in the policy
gradient under GRPO, ε-trace and ε-weight, as a PNG and a self-contained HTML page.

    python -m grpo_lambda.evaluation.credit --results <evaluation folder or samples.jsonl> --benchmark math --index 0 \
        --sample 0 [--grade paper] [--model <hub id | folder>] [--trace_lambda 0.99] [--trace_style both] \
        [--trace_floor 0] --output_dir plots

The sample is the row (benchmark, index, sample) of samples.jsonl; an option left out matches any, and the first
matching row is drawn (the command prints which). The picture states the sample's grade, the sign of the advantage
a GRPO update would give it (assumed from the grade alone: an evaluation has no group), and whether it was cut at
the token limit.

What the colours are (per token k of one completion, on-policy, the same advantage A on every token):
- GRPO: every token's ∇log π(a_k) is weighted by A: weight 1 everywhere.
- ε-trace (Alg. 1): the gradient is GRPO's with token k's advantage scaled by c_k = Σ_{t ≥ k} tr(t, t − k)
  (Theorem 1 regrouped by the earlier token; traces.credit_weights).
- ε-weight (Alg. 2): the clipped term of token k is multiplied by ε^w_k = Σ_l tr(k, l)·f(log π(a_{k−l}))
  (loss.eps_weight_trace_weights), which needs the completion's log-probabilities: the model scores it once.
Why ε-trace weighs early tokens and ε-weight late ones: WHY below, printed on the picture.
Each row is shown relative to its own mean (red: more than the mean token, blue: less; a log2 scale clipped at ±3),
so the three rows compare where the credit goes, not its overall size (which the learning rate absorbs); the HTML
shows each token's weight on hover. The advantage clamp (adv_clamp_min) scales every token of a completion alike
and does not change the picture.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.evaluation.backends import model_folder
from grpo_lambda.evaluation.grades import GRADES
from grpo_lambda.evaluation.store import read_lines, read_results, sample_key
from grpo_lambda.inputs import check_model
from grpo_lambda.loss import WEIGHT_CLAMP_FNS, eps_weight_trace_weights
from grpo_lambda.methods import TRACE_STYLES
from grpo_lambda.traces import TraceSpec, credit_weights

LIMIT = 3.0  # colour scale: log2(weight / row mean) clipped to ±LIMIT
WHY = (
    "Why they differ: ε-trace credits token k once for every later token whose trace holds it "
    "(c_k = Σ_{t ≥ k} tr(t, t − k)), so early tokens, held by more traces, weigh more; ε-weight scales token t by "
    "its own trace (Σ_{l ≤ t} tr(t, l)·f(log π(a_{t−l}))), a sum over the tokens up to it, so late tokens weigh more."
)


def token_weights(logps, trace: TraceSpec, weight_clamp_fn: str = "sigmoid") -> dict[str, np.ndarray]:
    """Per-token gradient weights of one completion under each method (see the module docstring).

    Args:
        logps: [T] log-probabilities of the completion's tokens under the policy.
        trace: γ, λ, style and floor of the traces.
    Returns:
        method name → [T] float64 weights.
    """
    import torch

    logps = torch.as_tensor(logps, dtype=torch.float64).reshape(1, -1)
    mask = torch.ones_like(logps)
    return {
        "GRPO": np.ones(logps.shape[1]),
        "ε-trace": credit_weights(mask, trace)[0].numpy(),
        "ε-weight": eps_weight_trace_weights(logps, mask, trace, weight_clamp_fn)[0].numpy(),
    }


def relative(weights: np.ndarray) -> np.ndarray:
    """log2(weight / mean weight), clipped to ±LIMIT: the colour coordinate of a row."""
    return np.clip(np.log2(np.maximum(weights, 1e-12) / weights.mean()), -LIMIT, LIMIT)


def score_completion(model: str, prompt: str, completion: str) -> tuple[list[str], list[float]]:
    """The completion's tokens (as text pieces) and their log-probabilities under `model`, given `prompt`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_folder(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    network = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not completion_ids:
        raise GRPOLambdaError("the sample's completion is empty: pick another one (--benchmark, --index, --sample).")
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = network(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]
    pieces = [tokenizer.decode([token]) for token in completion_ids]
    return pieces, logps.tolist()


def _colour(value: float) -> tuple[float, float, float]:
    """A diverging white-centred colour for a value in [−LIMIT, LIMIT] (blue below the mean, red above)."""
    strength = min(abs(value) / LIMIT, 1.0)
    if value >= 0:
        return (1.0, 1.0 - 0.75 * strength, 1.0 - 0.75 * strength)
    return (1.0 - 0.75 * strength, 1.0 - 0.5 * strength, 1.0)


def _ticks() -> list[tuple[float, str]]:
    """Colour-bar ticks: (log2 value, "×factor of the mean") from −LIMIT to LIMIT."""
    return [(v, f"{2.0**v:g}×" if v >= 0 else f"1/{2.0**-v:g}×") for v in np.arange(-LIMIT, LIMIT + 1)]


def outcome(sample: dict, grade: str) -> list[str]:
    """What the sample did, in two lines: its grade with the advantage sign a GRPO update would give it (assumed
    from the grade: reward 1 if correct, 0 if not; an evaluation has no group), and whether it hit the token limit."""
    verdict = (sample.get(grade) or {}).get("correct")
    assumed = "assumed from the grade alone, as an evaluation has no group"
    if verdict is None:
        graded = f"not graded by `{grade}` (make regrade): advantage sign unknown"
    elif verdict:
        graded = (
            f"correct ({grade} grade) → positive advantage if its group's mean reward is below 1: every token pushed "
            f"up by its weight ({assumed})"
        )
    else:
        graded = (
            f"incorrect ({grade} grade) → negative advantage if its group's mean reward is above 0: every token "
            f"pushed down by its weight ({assumed})"
        )
    tokens = "length not recorded" if sample.get("tokens") is None else f"{sample['tokens']} tokens"
    if "truncated" not in sample:
        length = f"{tokens}; whether it hit the token limit is not recorded"
    elif sample["truncated"]:
        length = f"truncated at the token limit ({tokens}); mask_truncated_completions would give it no gradient"
    else:
        length = f"finished before the token limit ({tokens})"
    return [graded, length]


def render_html(pieces: list[str], rows: dict[str, np.ndarray], title: str, notes: Sequence[str] = ()) -> str:
    """One page, no external resources: the notes, a colour bar, then a block per method, each token a span
    coloured by `relative`."""
    blocks = []
    for method, weights in rows.items():
        spans = []
        for piece, weight, value in zip(pieces, weights, relative(weights), strict=True):
            red, green, blue = (round(255 * c) for c in _colour(float(value)))
            text = html.escape(piece).replace("\n", "↵<br>")
            spans.append(
                f'<span style="background:rgb({red},{green},{blue})" title="weight {weight:.3g} '
                f'({weight / weights.mean():.2f}× the mean)">{text}</span>'
            )
        blocks.append(
            f"<h2>{html.escape(method)} <small>(weights {weights.min():.3g} to {weights.max():.3g}, mean "
            f"{weights.mean():.3g})</small></h2>\n<div class=c>{''.join(spans)}</div>"
        )
    stops = ", ".join(
        "rgb({},{},{})".format(*(round(255 * c) for c in _colour(v))) for v in np.linspace(-LIMIT, LIMIT, 13)
    )
    labels = "".join(f"<span>{html.escape(label)}</span>" for _, label in _ticks())
    bar = (
        f'<div class=bar style="background:linear-gradient(to right, {stops})"></div>\n'
        f"<div class=ticks>{labels}</div>\n"
    )
    listed = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return (
        "<!doctype html>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        ".c{font-family:monospace;white-space:pre-wrap;line-height:1.6}h2{font-size:1.1em}"
        ".bar{height:1em;max-width:30em;border:1px solid #999}"
        ".ticks{display:flex;justify-content:space-between;max-width:30em;font-size:.8em}</style>\n"
        f"<h1>{html.escape(title)}</h1>\n<ul>{listed}</ul>\n<p>{html.escape(WHY)}</p>\n"
        "<p>Red: more gradient weight than the completion's mean token, blue: less (log2 scale, clipped at "
        f"{2**LIMIT:g}×). Hover a token for its weight.</p>\n" + bar + "\n".join(blocks) + "\n"
    )


def render_png(
    pieces: list[str], rows: dict[str, np.ndarray], title: str, path: Path, notes: Sequence[str] = (), width: int = 90
) -> Path:
    """The same picture as a PNG: tokens laid out in monospace lines of `width` characters, one panel per method,
    the notes and WHY under the title and a colour bar at the bottom."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    layout, column, line = [], 0, 0  # (line, column, text) of every token
    for piece in pieces:
        text = piece.replace("\n", "↵")
        if column + len(text) > width and column > 0:
            line, column = line + 1, 0
        layout.append((line, column, text))
        column += len(text)
        if "\n" in piece:
            line, column = line + 1, 0
    lines = line + 1
    inches = width * 0.085  # figure width; the font size makes `width` monospace characters fill it
    fontsize = inches * 0.98 * 72 / (width * 0.602)  # DejaVu Sans Mono: a character advances 0.602 em
    height = lines * fontsize * 1.5 / 72 + 0.45  # per panel, in inches
    header = [title, *notes, WHY]
    header = [wrapped for text in header for wrapped in textwrap.wrap(text, 125)]
    top, bottom = 0.3 + 0.17 * len(header), 1.0  # inches: the header above the panels, the colour bar below
    total = height * len(rows) + top + bottom
    figure, axes = plt.subplots(len(rows), 1, figsize=(inches, total), squeeze=False)
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - top / total, bottom=bottom / total, hspace=0.35)
    for axis, (method, weights) in zip(axes[:, 0], rows.items(), strict=True):
        axis.set_xlim(0, width)
        axis.set_ylim(lines, 0)
        axis.axis("off")
        axis.set_title(f"{method}: weights {weights.min():.3g} to {weights.max():.3g}", fontsize=10, loc="left")
        for (row, col, text), value in zip(layout, relative(weights), strict=True):
            axis.add_patch(plt.Rectangle((col, row), len(text), 1, color=_colour(float(value)), linewidth=0))
            axis.text(col, row + 0.78, text, fontsize=fontsize, family="DejaVu Sans Mono")
    figure.text(0.01, 1 - 0.1 / total, "\n".join(header), fontsize=8, va="top", ha="left")
    colours = ListedColormap([_colour(v) for v in np.linspace(-LIMIT, LIMIT, 257)])
    scale = ScalarMappable(Normalize(-LIMIT, LIMIT), colours)
    bar_axis = figure.add_axes((0.25, 0.5 / total, 0.5, 0.15 / total))
    bar = figure.colorbar(scale, cax=bar_axis, orientation="horizontal")
    bar.set_ticks([v for v, _ in _ticks()], labels=[label for _, label in _ticks()], fontsize=8)
    bar.set_label("gradient weight relative to the completion's mean token (log2 scale)", fontsize=8)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _spans(numbers: list[int]) -> str:
    """0, 1, 2, 5, 7, 8 → "0–2, 5, 7–8": what exists, in one short line."""
    parts, numbers = [], sorted(set(numbers))
    for number in numbers:
        if parts and number == parts[-1][1] + 1:
            parts[-1][1] = number
        else:
            parts.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in parts)


def find_sample(samples: Path, benchmark: str | None, index: int | None, sample: int | None = None) -> dict:
    """The row (benchmark, index, sample) of an evaluation's samples.jsonl (a folder holding it, or the file); an
    option left as None matches any, and the first matching row is the one returned. A row that is not there raises
    one line naming what is (the benchmarks, a benchmark's problems, or a problem's samples)."""
    path = samples / "samples.jsonl" if samples.is_dir() else samples
    if not path.is_file():
        raise GRPOLambdaError(f"no samples at {path}: give an evaluation folder or its samples.jsonl.")
    keys = [(sample_key(row), row) for row in read_lines(path)]
    wanted = (benchmark, index, sample)
    for key, row in keys:
        if all(want is None or want == have for want, have in zip(wanted, key, strict=True)):
            return row
    present = [key for key, _ in keys]
    if not present:
        raise GRPOLambdaError(f"{path} has no samples yet: run make evaluate (or resume it) first.")
    benchmarks = list(dict.fromkeys(key[0] for key in present))
    if benchmark is not None and benchmark not in benchmarks:
        raise GRPOLambdaError(f"{path} has no benchmark {benchmark}; its benchmarks: {', '.join(benchmarks)}.")
    named = [key for key in present if benchmark in (None, key[0])]
    problems = [key for key in named if index in (None, key[1])]
    problem = (benchmark or "") + ("" if index is None else f" #{index}")
    if not problems:
        indices = "; ".join(
            f"{name} {_spans([k[1] for k in named if k[0] == name])}"
            for name in benchmarks
            if benchmark in (None, name)
        )
        raise GRPOLambdaError(f"{path} has no problem {problem.strip()}; its problems: {indices}.")
    raise GRPOLambdaError(
        f"{path} has no sample {sample} of {problem.strip() or 'any problem'}; it has samples "
        f"{_spans([k[2] for k in problems])} (--sample)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, help="An evaluation folder (or its samples.jsonl).")
    parser.add_argument("--benchmark", default=None, help="The sample's benchmark (default: the first row's).")
    parser.add_argument("--index", type=int, default=None, help="The sample's problem index (default: the first).")
    parser.add_argument("--sample", type=int, default=None, help="Which of the problem's k samples (default: first).")
    parser.add_argument("--grade", default="paper", choices=GRADES, help="The grade whose verdict is shown.")
    parser.add_argument("--model", default=None, help="Scores the completion (default: the evaluation's model).")
    parser.add_argument("--trace_lambda", type=float, default=0.99)
    parser.add_argument("--trace_gamma", type=float, default=1.0)
    parser.add_argument("--trace_style", default="both", choices=TRACE_STYLES)
    parser.add_argument("--trace_floor", type=float, default=0.0)
    parser.add_argument("--weight_clamp_fn", default="sigmoid", choices=WEIGHT_CLAMP_FNS)
    parser.add_argument("--output_dir", default="plots", help="Writes credit.png and credit.html into it.")
    args = parser.parse_args(argv)
    try:
        trace = TraceSpec(args.trace_gamma, args.trace_lambda, args.trace_style, args.trace_floor)
    except ValueError as error:
        raise GRPOLambdaError(str(error)) from error
    samples = Path(args.results)
    sample = find_sample(samples, args.benchmark, args.index, args.sample)
    benchmark, index, number = sample_key(sample)
    print(f"credit: {benchmark} #{index} sample {number} (--benchmark {benchmark} --index {index} --sample {number})")
    model, flag = args.model, "--model"
    if model is None:
        results = (samples if samples.is_dir() else samples.parent) / "results.json"
        if not results.is_file():
            raise GRPOLambdaError(f"no results.json beside {samples} to name the model: give --model.")
        model, flag = read_results(results).get("model"), f"the model {results} names (or give --model)"
        if not isinstance(model, str) or not model:
            raise GRPOLambdaError(f"{results} names no model (model: {model!r}): give --model.")
    check_model(model, flag)  # one line in seconds, before transformers loads anything
    pieces, logps = score_completion(model, sample["prompt"], sample["completion"])
    rows = token_weights(logps, trace, args.weight_clamp_fn)
    title = (
        f"{benchmark} #{index} sample {number}, {model}: λ={args.trace_lambda:g}, style {args.trace_style}, "
        f"floor {args.trace_floor:g}, {len(pieces)} tokens"
    )
    notes = outcome(sample, args.grade)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    png = render_png(pieces, rows, title, output / "credit.png", notes)
    page = output / "credit.html"
    page.write_text(render_html(pieces, rows, title, notes))
    print(*(f"  {note}" for note in notes), sep="\n")
    print(f"wrote {png} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
