"""Inputs that passed, or failed late, now stop in one line, in seconds, before anything heavy starts, naming the thing
and the fix (issue 34, part 4): training sets, settings, options a method or mode ignores, evaluation suites, the
make lines of compare / sft / train / sweep, credit, download, sweep submissions, embedded model names, run records
and the corrected grade's time. In-process through the entry points; make lines through `make` with a stand-in
Python that prints the command line it is given, which the real parsers then read."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from grpo_lambda.configs import read_recipe, resolve_settings
from grpo_lambda.data import check_dataset, load_problem_dataset
from grpo_lambda.errors import GRPOLambdaError, exit_status
from grpo_lambda.jobs import launch

DEFAULT_GRPO = REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
DEFAULT_SFT = REPO_ROOT / "recipes/default/sft/config_arithmetic.yaml"
PAPER_GRPO = REPO_ROOT / "recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/config_gsm8k_grpo.yaml"


def launcher_line(*argv: str) -> str:
    """The launcher's last line for `argv` (make train's flags), which must stop before it launches anything."""
    line = exit_status(launch.main, ["--accelerate", "cpu", *argv])
    assert isinstance(line, str) and line.startswith("grpo_lambda: ") and "\n" not in line, line
    return line


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """HF_HUB_OFFLINE=1 (conftest) with an empty model cache; the working folder is tmp_path."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- training sets --------------------------------------------------------------------------------------------------

DATASET_FILES = {
    "empty.jsonl": b"",
    "no-answers.jsonl": b'{"problem": "1 + 1", "answer": null}\n{"problem": "2 + 2", "answer": ""}\n',
    "latin1.jsonl": b'{"problem": "1 + 1", "answer": "2"}\n{"problem": "caf\xe9: 2 + 2", "answer": "4"}\n',
}
BAD_DATASETS = {
    # Before: the launcher passed them; training failed 43-54 s later under accelerate's traceback
    "uncached Hub dataset offline": (
        ["--dataset", "some-org/no-such-set"],
        r"DATASET=some-org/no-such-set: HF_HUB_OFFLINE=1 and the Hub dataset some-org/no-such-set is not in the "
        r"Hugging Face cache .*make download DATASET=some-org/no-such-set",
    ),
    "named training set not cached offline": (
        ["--dataset", "gsm8k"],
        r"DATASET=gsm8k: HF_HUB_OFFLINE=1 and openai/gsm8k .* is not in the Hugging Face cache",
    ),
    "single-file training set not cached offline": (
        ["--dataset", "orz-57k"],
        r"DATASET=orz-57k: HF_HUB_OFFLINE=1 and Tonic/OpenReasonerZero's orz_math_57k_collected\.json is not in",
    ),
    # Before: a traceback naming gsm8k (the dataset name), not the empty file
    "empty JSONL": (["--dataset", "empty.jsonl"], r"/empty\.jsonl holds no records"),
    "empty local copy of a named set": (
        ["--dataset", "gsm8k", "--args=--dataset_path empty.jsonl"],
        r"/empty\.jsonl holds no records",
    ),
    # Before: trained on U+FFFD replacement characters
    "not UTF-8": (["--dataset", "latin1.jsonl"], r"latin1\.jsonl line 2 is not UTF-8 \(byte 0xe9\): convert"),
    # Before: 0 rows, 0 steps, "finished"
    "every answer empty or null": (
        ["--dataset", "no-answers.jsonl"],
        r"no-answers\.jsonl: none of its 2 rows has both a problem and a gold answer",
    ),
}


@pytest.mark.parametrize("case", BAD_DATASETS)
def test_a_training_set_that_cannot_train_stops_the_launcher_in_one_line(offline_cache, case, capsys):
    for name, content in DATASET_FILES.items():
        (offline_cache / name).write_bytes(content)
    argv, expected = BAD_DATASETS[case]
    line = launcher_line(*argv)
    assert re.search(expected, line), line
    assert "command:" not in capsys.readouterr().out  # nothing was launched


def test_the_trainer_refuses_them_too(tmp_path):
    """A command that bypasses the launcher (accelerate launch -m grpo_lambda.grpo) gets the same line, not 0 rows
    or replacement characters."""
    for name, content in DATASET_FILES.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(GRPOLambdaError, match="none of its 2 rows has both a problem and a gold answer"):
        load_problem_dataset("mine", path=str(tmp_path / "no-answers.jsonl"))
    with pytest.raises(GRPOLambdaError, match="latin1.jsonl line 2 is not UTF-8"):
        load_problem_dataset("mine", path=str(tmp_path / "latin1.jsonl"))
    with pytest.raises(GRPOLambdaError, match=f"{tmp_path / 'empty.jsonl'} holds no records"):
        load_problem_dataset("gsm8k", path=str(tmp_path / "empty.jsonl"))


def test_a_cached_hub_dataset_passes_offline_and_loads(tmp_path, monkeypatch):
    """The offline check asks what training's loader does first (datasets.load_dataset_builder), so a dataset in
    the cache passes it, and training reads it from there."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"problem": "1 + 1", "answer": "2"}) + "\n")
    builder = Json(cache_dir=str(cache), dataset_name="cached", data_files={"train": [str(rows)]}, hash="0123abcd")
    builder.download_and_prepare()  # then laid out as a Hub download is: <org>___<name>/<config>/<version>/<hash>
    (cache / "cached").rename(cache / "some-org___cached")
    config = next((cache / "some-org___cached").iterdir())
    config.rename(config.with_name("default"))
    check_dataset("some-org/cached", parse=True)
    assert load_problem_dataset("some-org/cached").to_list() == [{"problem": "1 + 1", "answer": "2"}]
    with pytest.raises(GRPOLambdaError, match="HF_HUB_OFFLINE=1 and the Hub dataset some-org/other is not in"):
        check_dataset("some-org/other", parse=True)


# --- settings -------------------------------------------------------------------------------------------------------


def resolved(stage: str, **settings):
    recipe = DEFAULT_SFT if stage == "sft" else DEFAULT_GRPO
    return resolve_settings(stage, {**read_recipe(recipe), **settings}, for_reading=True)


BAD_VALUES = [
    # Before: one step at learning rate 0, then "finished"
    ("grpo", {"max_steps": 0}, "max_steps=0 is no number of steps"),
    ("sft", {"max_steps": 0}, "max_steps=0 is no number of steps"),
    # Before: a traceback after 36-41 s (the optimizer refuses it), or a run that climbs the loss
    ("grpo", {"learning_rate": -1e-6}, "learning_rate=-1e-06 would climb the loss"),
    ("sft", {"learning_rate": -1e-6}, "learning_rate=-1e-06 would climb the loss"),
    # TRL divides the logits by the temperature
    ("grpo", {"temperature": -1.0}, "temperature=-1.0: the policy's logits are divided by it"),
    ("grpo", {"temperature": 0.0}, "temperature=0.0: the policy's logits are divided by it"),
]


@pytest.mark.parametrize(("stage", "settings", "message"), BAD_VALUES)
def test_values_that_train_nothing_or_wrongly_are_refused_in_both_stages(stage, settings, message):
    with pytest.raises(GRPOLambdaError, match=message) as raised:
        resolved(stage, **settings)
    assert str(raised.value).startswith("configuration error:") and "\n" not in str(raised.value)


def test_a_negative_value_after_a_space_says_how_to_write_it(offline_cache):
    """argparse reads `-1e-6` as an option of its own: its 'expected one argument' now says what to do."""
    line = launcher_line("--args=--learning_rate -1e-6")
    assert "expected one argument (a value that starts with '-' goes after '=': --learning_rate=<value>)" in line
    assert "learning_rate=-1e-06 would climb the loss" in launcher_line("--args=--learning_rate=-1e-6")


IGNORED = {
    # make train LOSS_VARIANT=grpo ARGS=...: the folder said grpo, and λ went nowhere
    "trace_lambda with grpo": (
        ["--loss_variant", "grpo", "--args=--trace_lambda 0.5"],
        "trace_lambda=0.5 would be ignored: loss_variant=grpo does not read it",
    ),
    "trace fields of an eps_trace recipe turned grpo": (
        ["--args=--loss_variant grpo"],
        "trace_style=both, trace_lambda=0.99, trace_gamma=1.0, trace_floor=0.0 would be ignored: loss_variant=grpo",
    ),
    "weight_clamp_fn with eps_trace": (
        ["--args=--weight_clamp_fn tanh"],
        "weight_clamp_fn=tanh would be ignored: loss_variant=eps_trace does not read it",
    ),
    "vllm_mode without use_vllm": (
        ["--args=--vllm_mode server"],
        "vllm_mode=server would be ignored: use_vllm is false (the default)",
    ),
}


@pytest.mark.parametrize("case", IGNORED)
def test_options_the_chosen_method_or_mode_ignores_are_refused(offline_cache, case):
    argv, message = IGNORED[case]
    assert message in launcher_line(*argv)


def test_what_is_not_ignored_still_passes():
    """Only what a recipe or the user set is judged, never a default (every shipped recipe: test_configs); a paper
    recipe's vLLM settings stay when the user turns vLLM off (README: ARGS='--use_vllm false' without vLLM)."""
    settings = resolve_settings("grpo", {**read_recipe(PAPER_GRPO), "use_vllm": False}, for_reading=True)
    assert not settings.training.use_vllm and settings.training.vllm_mode == "colocate"
    assert resolved("grpo", loss_variant="eps_weight", weight_clamp_fn="tanh").training.weight_clamp_fn == "tanh"
    grpo = REPO_ROOT / "recipes/default/grpo/config_arithmetic_grpo.yaml"
    assert resolve_settings("grpo", read_recipe(grpo), for_reading=True).training.trace_lambda == 0.99  # a default


# --- make lines -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_python(tmp_path_factory) -> Path:
    """A VENV whose python prints its arguments, one per line, NUL-free: what make hands the real entry point."""
    venv = tmp_path_factory.mktemp("venv")
    (venv / "bin").mkdir()
    python = venv / "bin" / "python"
    python.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    python.chmod(0o755)
    return venv


def make_argv(venv: Path, target: str, *variables: str) -> list[str]:
    """The arguments `make <target> <variables>` gives the entry point after `-m <module>`."""
    result = subprocess.run(
        ["make", "-s", "-o", "install", f"VENV={venv}", target, *variables],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()[2:]


def test_one_token_trainer_and_sbatch_flags_reach_their_parsers(stand_in_python, tmp_path, capsys):
    """`ARGS="--max_steps=1"` and `SBATCH_ARGS="--account=abc"`: before the one-parse change, make passed
    `--args "--max_steps=1"`, which argparse read as a missing value ("expected one argument"). Fixed by that
    change (--args="$(ARGS)", --sbatch-args="$(SBATCH_ARGS)"); this keeps it."""
    argv = make_argv(stand_in_python, "train", "ARGS=--max_steps=1", "DRY_RUN=1")
    assert launch.plan(launch.parser().parse_args(argv), REPO_ROOT).settings.training.max_steps == 1
    from grpo_lambda.jobs import sweep

    argv = make_argv(stand_in_python, "sweep", "SWEEP=tiny-cpu", "SBATCH_ARGS=--account=abc", "DRY_RUN=1")
    assert sweep.main([*argv, "--output_dir", str(tmp_path / "sweep")]) == 0
    submissions = [line for line in capsys.readouterr().out.splitlines() if "sbatch " in line]
    assert len(submissions) == 3 and all("--account=abc" in line for line in submissions)


def test_method_flags_with_make_sft_are_refused(stand_in_python):
    """Before, the sft target dropped LOSS_VARIANT, TRACE_STYLE and TRACE_LAMBDA without a word."""
    argv = make_argv(stand_in_python, "sft", "LOSS_VARIANT=grpo", "DRY_RUN=1")
    with pytest.raises(GRPOLambdaError, match="LOSS_VARIANT, TRACE_STYLE and TRACE_LAMBDA apply to `make train`"):
        launch.plan(launch.parser().parse_args(argv), REPO_ROOT)


def test_compare_takes_a_folder_with_spaces_whole(stand_in_python, tmp_path):
    """Before, B="folder with space" reached compare as three folders, "folder", "with" and "space"."""
    spaced = tmp_path / "eval with space"
    spaced.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    argv = make_argv(stand_in_python, "compare", f"A={other}", f"B={spaced}")
    assert argv[argv.index("--a") : argv.index("--grade")] == ["--a", str(other), "--b", str(spaced)]
    # a list of folders is still a list, and an escaped space still joins
    argv = make_argv(stand_in_python, "compare", f"A={other} {other}", f"B={str(spaced).replace(' ', chr(92) + ' ')}")
    assert argv[argv.index("--a") : argv.index("--grade")] == ["--a", str(other), str(other), "--b", str(spaced)]


# --- evaluation -----------------------------------------------------------------------------------------------------


def evaluate_line(tmp_path: Path, suite: Path) -> str:
    from grpo_lambda.evaluation import evaluate

    argv = ["--model", "embedded:tiny-qwen2", "--suite", str(suite), "--benchmarks", "math", "--backend"]
    with pytest.raises(GRPOLambdaError) as raised:
        evaluate.main([*argv, "transformers", "--output_dir", str(tmp_path / "out")])
    assert "\n" not in str(raised.value)
    return str(raised.value)


def test_a_benchmark_without_problems_stops_the_evaluation(tmp_path):
    """Before: a TypeError after the evaluation, and a results.json without benchmarks."""
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "math.jsonl").write_text("")
    line = evaluate_line(tmp_path, tmp_path / "suite")
    assert (
        line == f"{tmp_path / 'suite' / 'math.jsonl'} holds no problems: fill it, or leave math out (BENCHMARKS=...)."
    )
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("gold", [None, "", "  ", []])
def test_a_problem_without_a_gold_answer_stops_the_evaluation(tmp_path, gold):
    """Before: graded against no answer, every sample of it counted as wrong."""
    (tmp_path / "suite").mkdir()
    rows = [{"problem": "1 + 1?", "answer": "2"}, {"problem": "2 + 2?", "answer": gold}]
    (tmp_path / "suite" / "math.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    line = evaluate_line(tmp_path, tmp_path / "suite")
    assert line.startswith(f"{tmp_path / 'suite' / 'math.jsonl'}: problem 1 has no gold answer (answer {gold!r})")


def test_credit_names_a_missing_model_in_one_line(tmp_path):
    """Before: KeyError for a results.json without its model, a transformers traceback for a deleted model."""
    from grpo_lambda.evaluation import credit

    folder = tmp_path / "eval"
    folder.mkdir()
    sample = {"benchmark": "arithmetic", "index": 0, "prompt": "1 + 1?", "completion": "2"}
    (folder / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    argv = ["--results", str(folder), "--output_dir", str(tmp_path / "out")]
    (folder / "results.json").write_text(json.dumps({"benchmarks": {}}))
    with pytest.raises(GRPOLambdaError, match="results.json names no model .*: give --model"):
        credit.main(argv)
    (folder / "results.json").write_text(json.dumps({"model": str(tmp_path / "deleted"), "benchmarks": {}}))
    with pytest.raises(GRPOLambdaError, match=f"model folder {tmp_path / 'deleted'} does not exist"):
        credit.main(argv)
    (folder / "results.json").write_text('{"model": "x", "bench')  # cut short
    with pytest.raises(GRPOLambdaError, match="results.json is not valid JSON"):
        credit.main(argv)


@pytest.mark.parametrize("answer", ["10^{10^{10^{10}}}", "99999999!", "1e999999999", "\\prod_{i=1}^{10^9} i"])
def test_the_corrected_grade_is_bounded_when_called_directly(answer):
    """Before: math-verify evaluated these exactly, for more than 60 s (hours), in C code that holds the GIL and no
    alarm interrupts; the evaluation's grading worker bounded them, a direct call did not. Now they are "not equal"
    from the expression tree alone. (The forked child is only a guard for the old code: a hang fails the test.)"""
    from grpo_lambda.evaluation import corrected_grade

    context = multiprocessing.get_context("fork")  # the modules are loaded already: the child starts at once
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=lambda: send.send(corrected_grade.is_correct(answer, ["5"])), daemon=True)
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
    assert receive.poll() and receive.recv() is False


def test_the_bound_leaves_sane_numbers_graded():
    from grpo_lambda.evaluation.corrected_grade import is_correct

    assert is_correct("2^{100}", [str(2**100)]) and is_correct("3^{2^{5}}", [str(3**32)])
    assert is_correct("10!", ["3628800"]) and is_correct("\\binom{10}{3}", ["120"])
    assert is_correct("\\sum_{i=1}^{100} i", ["5050"]) and is_correct("2^{-10}", ["\\frac{1}{1024}"])
    assert not is_correct("2^{100}", [str(2**100 + 1)])


# --- jobs -----------------------------------------------------------------------------------------------------------


def test_download_without_network_is_one_line(tmp_path, monkeypatch):
    """Before: LocalEntryNotFoundError / ConnectionError tracebacks (datasets' after ~25 s of retries). The Hub
    here is a closed port: what a node without network meets."""
    import datasets
    from huggingface_hub import constants

    from grpo_lambda.jobs import download

    monkeypatch.delenv("HF_HUB_OFFLINE")
    closed = "http://127.0.0.1:9"
    for module, name, value in (
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "ENDPOINT", closed),
        (constants, "HF_HUB_CACHE", str(tmp_path / "hub")),
        (datasets.config, "HF_HUB_OFFLINE", False),
        (datasets.config, "HF_ENDPOINT", closed),
        (datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets"),
    ):
        monkeypatch.setattr(module, name, value)
    for argv, what in (
        (["--model", "org/some-model"], "MODEL=org/some-model"),
        (["--dataset", "math12k"], "DATASET="),
    ):
        line = exit_status(download.main, argv)
        assert isinstance(line, str) and line.startswith(f"grpo_lambda: {what}") and "\n" not in line, line
        assert "cannot fetch it from the Hugging Face Hub" in line and "where there is network" in line


@pytest.mark.parametrize(
    ("flags", "own"),
    [
        ("--array=0-3", "--array"),
        ("-o logs/x.out", "--output"),
        ("--no-requeue", "--requeue"),
        ("--signal=B:USR1@9", "--signal"),
    ],
)
def test_sbatch_args_may_not_override_the_sweeps_own_flags(tmp_path, flags, own):
    """Before: sbatch took the last of two flags, the user's: another array than the runs the sweep records, logs
    where the sweep does not look."""
    from grpo_lambda.jobs import sweep

    argv = ["submit", "tiny-cpu", "--dry-run", f"--sbatch-args={flags} --account=abc", "--output_dir", str(tmp_path)]
    with pytest.raises(GRPOLambdaError, match=f"would override the sweep's own {own}: drop it"):
        sweep.main(argv)


def test_an_embedded_name_that_is_no_embedded_model_stops_in_seconds(offline_cache, capsys):
    """Before: accepted by the launcher's model check, refused by the trainer after accelerate had started (28 s),
    and by the evaluation after it had created its output folder."""
    from grpo_lambda.evaluation import evaluate

    line = launcher_line("--model", "embedded:../../etc")
    assert line.startswith("grpo_lambda: MODEL=embedded:../../etc is no embedded model; they are embedded:")
    assert "command:" not in capsys.readouterr().out
    with pytest.raises(GRPOLambdaError, match="MODEL=embedded:../../etc is no embedded model"):
        evaluate.main(["--model", "embedded:../../etc", "--output_dir", str(offline_cache / "out")])
    assert not (offline_cache / "out").exists()


def test_a_truncated_run_record_is_one_line_at_the_entry_points(offline_cache, tiny_model_dir):
    """An SFT output folder given as MODEL: its grpo_lambda_run.json, cut short, was a JSONDecodeError traceback;
    layout.run_record refuses it in one line since the one-parse change (this keeps it)."""
    from grpo_lambda.evaluation import evaluate

    model = offline_cache / "sft-run"
    shutil.copytree(tiny_model_dir, model)
    (model / "grpo_lambda_run.json").write_text('{"stage": "sft", "model": "deepseek-ai/Deep')
    line = launcher_line("--model", str(model), "--dataset", "gsm8k")
    assert (
        line
        == f"grpo_lambda: {model / 'grpo_lambda_run.json'} is not a run record (JSON object): restore it or delete the run folder."
    )
    with pytest.raises(GRPOLambdaError, match="grpo_lambda_run.json is not a run record"):
        evaluate.main(["--model", str(model), "--output_dir", str(offline_cache / "out"), "--backend", "transformers"])


def test_vllm_settings_with_the_transformers_backend_are_refused():
    from grpo_lambda.evaluation.config import parse_config

    base = ["--model", "m", "--output_dir", "o", "--backend", "transformers"]
    with pytest.raises(GRPOLambdaError, match="tensor_parallel_size=2 would be ignored"):
        parse_config([*base, "--tensor_parallel_size", "2"])
    assert parse_config(base).tensor_parallel_size == 1
