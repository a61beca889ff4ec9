"""Our `paper` grade beside understand-r1-zero's own grader, completion by completion: prints every disagreement.

    git clone https://github.com/sail-sg/understand-r1-zero /tmp/understand-r1-zero
    python scripts/check_paper_grade.py --reference /tmp/understand-r1-zero [--problems 400] [--seed 2]

The corpus is seeded: for each drawn problem of the suite, its first gold answer, rewrites of it (stripped, units,
`k = `, `\\dfrac`, a trailing period, upper case, no spaces, a hedge, a sign, a percent sign, numeric neighbours)
and another problem's gold, each put in 10 completion forms across the three templates (boxes with and without
braces, `r1` tags with and without the exact spacing). A disagreement caused by a 1-second bound (on a busy
machine) shows as a verdict that changes when the line is graded again.
"""

import argparse
import logging
import random
import sys
import time

from grpo_lambda.evaluation import paper_grade
from grpo_lambda.evaluation.grades import warm_up
from grpo_lambda.evaluation.suite import BENCHMARKS, load_suite


def answers(gold: str, other: str) -> list[str]:
    g = gold.strip()
    forms = [g, gold, other, g + "\\text{ cm}", "x = " + g, g.replace("\\frac", "\\dfrac"), g + ".", g.upper()]
    forms += [g.replace(" ", ""), f" {g} ", g + " \\text{ or } 7", "-" + g, g + "\\%", g.replace("\\", "")]
    try:
        value = float(g)
    except ValueError:
        return forms
    return forms + [
        str(value + 1),
        f"{value:e}",
        f"{value:.3f}",
        str(int(value)) if value.is_integer() else str(value),
    ]


def completions(answer: str) -> list[tuple[str, str]]:
    return [
        ("qwen_math", f"So \\boxed{{{answer}}}."),
        ("no", f"Thus \\boxed{{{answer}}}"),
        ("qwen_math", f"\\boxed {{{answer}}}"),
        ("qwen_math", f"\\boxed{{{answer}}} and \\boxed 3"),
        ("qwen_math", "no box " + answer),
        ("r1", f" ok </think> <answer> {answer} </answer>"),
        ("r1", f" ok </think>\n<answer>{answer}</answer>"),
        ("r1", f" ok </think> <answer> \\boxed{{{answer}}} </answer>"),
        ("r1", f" ok </think> <answer> \\boxed {answer} </answer>"),
        ("r1", f"<answer>{answer}</answer>"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="A checkout of sail-sg/understand-r1-zero.")
    parser.add_argument("--problems", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    from understand_r1_zero import math_grader as reference

    logging.disable(logging.WARNING)
    paper_grade.check_dependencies()
    warm_up()  # warm both graders up: a cold first parse can trip a 1-second bound
    reference.boxed_reward_fn("\\boxed{\\frac{1}{2}}", "(0.5, \\sqrt{2})", fast=False)
    rng = random.Random(args.seed)
    suite = load_suite(None, list(BENCHMARKS))
    drawn = rng.sample(suite, min(args.problems, len(suite)))
    total, disagreements, start = 0, 0, time.perf_counter()
    for item in drawn:
        other = rng.choice(suite)["paper_golds"][0]
        for answer in answers(item["paper_golds"][0], other):
            for template, completion in completions(answer):
                grade = reference.answer_tag_reward_fn if template == "r1" else reference.boxed_reward_fn
                info, score = grade(completion, item["paper_golds"], fast=False)  # a list: OR-ed, as the reference
                formatted, extracted = paper_grade.read_answer(completion, template)
                ours = (formatted, extracted is not None and paper_grade.is_correct(extracted, item["paper_golds"]))
                total += 1
                if ours != (info["formatted"], score == 1.0):
                    disagreements += 1
                    print(
                        f"{item['benchmark']} {item['index']} {template} {completion!r}: reference "
                        f"{(info['formatted'], score == 1.0)}, ours {ours}",
                        flush=True,
                    )
    print(f"{total} completions, {disagreements} disagreements, {time.perf_counter() - start:.0f} s")
    return int(disagreements > 0)


if __name__ == "__main__":
    sys.exit(main())
