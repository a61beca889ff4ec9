"""The evaluation's two grades: `paper` (understand-r1-zero's grader, rule for rule) and `corrected`, one protocol
probe per rule (docs/evaluation.md), every gold answer of the suite credited by both, and regrading without
generating."""

import json
import subprocess
import sys

import pytest

from grpo_lambda import answers
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.evaluation import corrected_grade, paper_grade
from grpo_lambda.evaluation.evaluate import main
from grpo_lambda.evaluation.grades import grade_sample, warm_up
from grpo_lambda.evaluation.suite import BENCHMARKS, load_suite
from grpo_lambda.grading import Grader


@pytest.fixture(scope="module", autouse=True)
def warm_graders():
    """The grading worker's warm-up, here in the test process: a cold first parse can trip the paper grade's
    1-second bounds (a timeout scores 0, as in the reference)."""
    warm_up()


@pytest.fixture(scope="module")
def suite():
    return {(item["benchmark"], item["index"]): item for item in load_suite(None, list(BENCHMARKS))}


# (rule, template, suite row, completion, paper grade (formatted, correct), corrected grade (formatted, correct)).
# The suite rows' stored answers: aime 0 "204"; amc 0 142.0; math 358 "\text{ellipse}"; minerva 4
# ["7 \times 10^{37}\n"], 9 ["4.5e33\n"], 15 ["3.83 \times 10^{35}\n"], 44 ["-3/2\n"], 82 ["-2"],
# 198 ["1.45 \times 10^{-5}\n", "1.45 \times 10^{-5}"], 263 ["4.6 \times 10^{-24}\n"]; olympiad_bench 34
# ["$m_{\max }=n^{2}-n-1$"], 366 ["96"].
PROBES = [
    # r1: the reference needs "</think> <answer>" (one space) and "</answer>"
    ("r1 exact format", "r1", ("aime", 0), " 2 hours. </think> <answer> 204 </answer>", (True, True), (True, True)),
    (
        "r1 box inside the tag",
        "r1",
        ("aime", 0),
        " so </think> <answer> \\boxed{204} </answer>",
        (True, True),
        (True, True),
    ),
    (
        "r1 newline before <answer>",
        "r1",
        ("aime", 0),
        " so </think>\n<answer> 204 </answer>",
        (False, False),
        (True, True),
    ),
    (
        "r1 no space before <answer>",
        "r1",
        ("aime", 0),
        " so </think><answer>204</answer>",
        (False, False),
        (True, True),
    ),
    ("r1 without </think>", "r1", ("aime", 0), " so <answer> 204 </answer>", (False, False), (False, False)),
    (
        "r1 brace-less box in the tag",
        "r1",
        ("aime", 0),
        " so </think> <answer> \\boxed 204 </answer>",
        (True, False),
        (True, False),
    ),
    # no: a box is required (the whole text is never graded)
    ("no without a box", "no", ("aime", 0), "The walk takes 204 minutes.", (False, False), (False, False)),
    ("no with a box", "no", ("aime", 0), "The walk takes \\boxed{204} minutes.", (True, True), (True, True)),
    # the last box decides
    (
        "brace-less last box",
        "qwen_math",
        ("aime", 0),
        "\\boxed{204}, i.e. \\boxed 204",
        (False, False),
        (False, False),
    ),
    ("space before the box's brace", "qwen_math", ("aime", 0), "\\boxed {204}", (False, False), (True, True)),
    ("number gold stored as a float", "qwen_math", ("amc", 0), "\\boxed{142}", (True, True), (True, True)),
    # golds: the reference keeps Minerva's trailing newline, which math-verify then misreads
    ("unstripped gold read as 10", "qwen_math", ("minerva", 15), "\\boxed{10}", (True, True), (True, False)),
    ("unstripped gold read as -3", "qwen_math", ("minerva", 44), "\\boxed{-3}", (True, True), (True, False)),
    (
        "unstripped gold misses a rewrite",
        "qwen_math",
        ("minerva", 4),
        "\\boxed{7.0 \\times 10^{37}}",
        (True, False),
        (True, True),
    ),
    ("e-notation gold", "qwen_math", ("minerva", 9), "\\boxed{4.5 \\times 10^{33}}", (True, False), (True, True)),
    # other grading rules
    ("hedge", "qwen_math", ("olympiad_bench", 366), "\\boxed{96 \\text{ or } 97}", (True, True), (True, False)),
    ("tiny magnitudes", "qwen_math", ("minerva", 263), "\\boxed{1 \\times 10^{-30}}", (True, False), (True, False)),
    ("e-notation answer", "qwen_math", ("minerva", 198), "\\boxed{1.45e-5}", (True, True), (True, True)),
    ("percent sign", "qwen_math", ("minerva", 82), "\\boxed{-2\\%}", (True, True), (True, True)),
    ("upper-case word", "qwen_math", ("math", 358), "\\boxed{ELLIPSE}", (True, True), (True, True)),
    ("spacing", "qwen_math", ("olympiad_bench", 34), "\\boxed{m_{\\max}=n^{2}-n-1}", (True, True), (True, True)),
]


def grades(completion: str, template: str, item: dict) -> tuple[tuple, tuple]:
    formatted, answer = paper_grade.read_answer(completion, template)
    paper = (formatted, answer is not None and paper_grade.is_correct(answer, item["paper_golds"]))
    formatted, answer = answers.read_answer(completion, template)
    corrected = (formatted, answer is not None and corrected_grade.is_correct(answer, item["golds"]))
    return paper, corrected


@pytest.mark.parametrize("rule,template,row,completion,paper,corrected", PROBES, ids=[p[0] for p in PROBES])
def test_protocol(suite, rule, template, row, completion, paper, corrected):
    assert grades(completion, template, suite[row]) == (paper, corrected)


@pytest.mark.parametrize(
    "answer,gold,paper,corrected",
    [
        ("x^2+1.", "x^2+1", True, True),  # a trailing period is punctuation
        ("\\frac{1}{2}.", "\\frac{1}{2}", False, True),
        ("\\text{No  solution}", "\\text{No solution}", True, True),
        ("2\\pic", "2\\pi c", False, False),  # "\pic" is not "\pi c"
        ("1.5e-10", "1.5 \\times 10^{-10}", False, True),
        ("0.09", "9\\%", True, True),
        ("\\frac{1}{3}", "0.3333333", True, True),
        ("0.0000001", "0.0000002", True, False),  # math-verify rounds both to 0.000000
    ],
)
def test_answer_rules(answer, gold, paper, corrected):
    assert paper_grade.is_correct(answer, [gold]) is paper
    assert corrected_grade.is_correct(answer, [gold]) is corrected


def test_the_paper_grade_reads_boxes_as_the_reference():
    assert paper_grade.read_answer("a \\boxed{\\frac{1}{2}} b", "qwen_math") == (True, "\\frac{1}{2}")
    assert paper_grade.read_answer("\\boxed{1} \\boxed{2", "qwen_math") == (False, None)  # the last box is unclosed
    # a closing brace first: the count never returns to 0
    assert paper_grade.read_answer("\\boxed 5} {x}", "qwen_math") == (False, None)
    assert answers.last_box("\\boxed {\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert answers.last_box("\\boxed{1} \\boxed 2") is None


def test_the_repetition_filter():
    """The reference drops answers over 128 characters whose suffixes share long prefixes (loops)."""
    assert paper_grade._is_repetitive("ab" * 80)
    assert not paper_grade._is_repetitive("".join(chr(65 + (i * 7) % 26) + str(i) for i in range(60)))
    looping = "\\frac{1}{2}" + " = \\frac{1}{2}" * 12
    assert len(looping) > 128 and paper_grade._math_verify_equal(looping, "\\frac{1}{2}") is False


def test_every_gold_answer_boxed_verbatim_is_credited_by_both_grades(suite):
    """Every stored gold answer (1 639 across the 1 560 problems: Minerva lists several), boxed as stored."""
    grader = Grader(timeout_s=10.0, warm_up=warm_up)
    failures = {}
    count = 0
    for item in suite.values():
        for gold in item["paper_golds"]:
            count += 1
            verdicts = grade_sample(
                grader, f"So the answer is \\boxed{{{gold}}}.", "qwen_math", item["golds"], item["paper_golds"]
            )
            for grade, verdict in verdicts.items():
                if not verdict["correct"]:
                    failures.setdefault(grade, []).append((item["benchmark"], item["index"], gold))
    grader.close()
    assert count == 1639
    assert failures == {}


def test_wrong_answers_are_graded_wrong_by_both_grades(suite):
    items = list(suite.values())
    numeric = [item for item in items if item["golds"][0].lstrip("-").isdigit()][::10]
    nonsense = items[:: len(items) // 40]
    probes = [(str(int(item["golds"][0]) + 1), item) for item in numeric]
    probes += [("\\text{banana}", item) for item in nonsense]
    grader = Grader(timeout_s=10.0, warm_up=warm_up)
    for check, golds in ((paper_grade.is_correct, "paper_golds"), (corrected_grade.is_correct, "golds")):
        verdicts = grader([(answer, item[golds]) for answer, item in probes], check)
        assert not any(verdicts), [p[0] for p, v in zip(probes, verdicts) if v]
    grader.close()


def write_samples(folder, probes):
    folder.mkdir(parents=True)
    lines = [
        json.dumps({"benchmark": row[0], "index": row[1], "completion": completion})
        for _, _, row, completion, *_ in probes
    ]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("template", ["qwen_math", "r1"])
def test_regrade_scores_samples_made_elsewhere(suite, tmp_path, template, capsys):
    """`--regrade` on a samples file of completions produced elsewhere (benchmark, index, completion; the template
    on the command line): both grades per sample and per benchmark, nothing generated."""
    probes = [p for p in PROBES if p[1] == template]
    folder = tmp_path / "elsewhere"
    write_samples(folder, probes)
    with pytest.raises(GRPOLambdaError, match="say which template"):
        main(["--regrade", str(folder)])
    main(["--regrade", str(folder), "--template", template])
    assert "results: " in capsys.readouterr().out
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(probes)
    for sample, (rule, _, row, completion, paper, corrected) in zip(samples, probes):
        assert (sample["benchmark"], sample["index"], sample["completion"]) == (*row, completion)
        assert (sample["paper"]["formatted"], sample["paper"]["correct"]) == paper, rule
        assert (sample["corrected"]["formatted"], sample["corrected"]["correct"]) == corrected, rule
        assert sample["golds"] == suite[row]["golds"] and sample["template"] == template
    results = json.loads((folder / "results.json").read_text())
    for benchmark, values in results["benchmarks"].items():
        mine = [p for p in probes if p[2][0] == benchmark]
        assert values["n"] == len(mine) and values["mean_generation_length"] is None
        for grade, expected in (("paper", 4), ("corrected", 5)):
            assert values[grade]["accuracy"] == pytest.approx(sum(p[expected][1] for p in mine) / len(mine))
            assert values[grade]["format_rate"] == pytest.approx(sum(p[expected][0] for p in mine) / len(mine))
    before = (folder / "samples.jsonl").read_text()
    main(["--regrade", str(folder)])  # the template is now recorded; regrading again changes nothing
    assert (folder / "samples.jsonl").read_text() == before


# Answers that sympy, asked to evaluate them, would compute for hours: towers (one behind a minus sign, which the
# reference's filter misses), a factorial, and an expansion of 9 801 terms. Golds that are not integers, so that
# the sympy check (rule 4) is reached.
UNBOUNDED_ANSWERS = [
    "9**9**9",
    "10**10**10",
    "2^{-9^{9}}",
    "2^{2^{2^{30}}}",
    "99999999!",
    "(x**99-1)*(y**99-1)/((x-1)*(y-1))",
]


def test_the_paper_grade_never_evaluates_an_unbounded_answer():
    """Called directly, outside the evaluation's time-bounded worker, the paper grade gives a verdict on each
    (wrong) at once instead of hanging; a subprocess with a deadline keeps this test from hanging with it."""
    script = r"""
import json, sys
from grpo_lambda.evaluation import paper_grade
for answer in json.loads(sys.argv[1]):
    formatted, read = paper_grade.read_answer("\\boxed{%s}" % answer, "qwen_math")
    print(json.dumps([answer, formatted, paper_grade.is_correct(read, ["\\frac{1}{2}"])]), flush=True)
"""
    command = [sys.executable, "-c", script, json.dumps(UNBOUNDED_ANSWERS)]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as expired:
        done = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
        pytest.fail(f"the paper grade hung after these verdicts: {done.splitlines()}")
    assert out.returncode == 0, out.stderr[-2000:]
    verdicts = [json.loads(line) for line in out.stdout.splitlines()]
    assert verdicts == [[answer, True, False] for answer in UNBOUNDED_ANSWERS]


def test_answers_within_the_bounds_still_reach_sympy():
    """The bounds leave ordinary algebra to sympy's simplify (rule 4): neither normalisation makes these equal."""
    assert paper_grade._sympy_equal("(x+1)^2", "x^2+2x+1")
    assert paper_grade._sympy_equal("(x+y+1)**3/(x+y+1)", "(x+y+1)^2")
    assert paper_grade._sympy_equal("2**-3", "1/8")
    assert not paper_grade._mathd_equal("(x+1)^2", "x^2+2x+1")
