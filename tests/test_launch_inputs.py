"""What `make train` / `make evaluate` are given fails in one line, in seconds and before anything starts: the model,
the training set, the settings, the output folder, options a combination would ignore; paths start where the user
ran the command; an error the trainer raises after the launch is the launcher's last line; a full disk is one line."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from grpo_lambda.data import load_problem_dataset
from grpo_lambda.errors import EXIT_FILE_VARIABLE, GRPOLambdaError, exit_status
from grpo_lambda.jobs import launch


def run_launcher(*argv: str, cwd: Path = REPO_ROOT, env: dict | None = None, timeout: int = 600):
    return subprocess.run(
        [sys.executable, "-m", "grpo_lambda.jobs.launch", "--accelerate", "cpu", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


@pytest.fixture
def inputs(tmp_path) -> Path:
    (tmp_path / "bad.jsonl").write_text('{"problem": "1 + 1", "answer": "2"}\n{"problem": oops}\n')
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "a-file").write_text("")
    return tmp_path


BAD_INPUTS = {
    "missing model folder": (["--model", "./no-such-model"], r"model folder .*/no-such-model does not exist"),
    "folder without config.json": (["--model", "not-a-model"], r"not-a-model has no config\.json"),
    "Hub id offline, not cached": (
        ["--model", "some-org/some-model"],
        r"HF_HUB_OFFLINE=1 and the model is not in the Hugging Face cache .*/hub-cache",
    ),
    "malformed JSONL": (["--dataset", "bad.jsonl"], r"bad\.jsonl line 2 is not JSON"),
    "dataset_path beside a built-in task": (
        ["--dataset", "arithmetic", "--args=--dataset_path bad.jsonl"],
        r"dataset_path=.*bad\.jsonl would be ignored: dataset_name=arithmetic is a built-in generated task",
    ),
    "output folder under a file": (["--args=--output_dir a-file/run"], r"a-file is a file, not a folder"),
    "settings the trainer refuses": (
        ["--args=--max_completion_length 0"],
        r"configuration error: max_completion_length=0 must be a positive number",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_stop_in_one_line_before_anything_starts(inputs, case, monkeypatch, capsys):
    """Before, each of these started accelerate and the trainer, and failed (or, for dataset_path, trained the
    built-in task) 20–40 s later under accelerate's CalledProcessError traceback. Paths are the user's, relative
    to the folder the command runs in (here not the repository). In-process: the entry point's own exit_status."""
    argv, expected = BAD_INPUTS[case]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(inputs / "hub-cache"))
    monkeypatch.chdir(inputs)
    line = exit_status(launch.main, ["--accelerate", "cpu", *argv])
    assert isinstance(line, str) and line.startswith("grpo_lambda: ") and "\n" not in line
    assert re.search(expected, line), line
    assert "command:" not in capsys.readouterr().out  # nothing was launched
    assert not list(inputs.glob("**/checkpoint-*"))


def test_a_bad_input_is_the_launchers_last_line_and_exit_status(inputs):
    result = run_launcher("--model", "./no-such-model", cwd=inputs)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"grpo_lambda: model folder .*/no-such-model does not exist", last_line(result))


@pytest.mark.slow
def test_an_error_the_trainer_raises_after_the_launch_is_the_last_line(tiny_model_dir, tmp_path):
    """The trainer's one line (here: the folder holds another method's run, grpo_lambda.reruns) came above
    accelerate's 18-line CalledProcessError traceback; it is now the launcher's last line."""
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    record = {"method": "grpo", "model": str(tiny_model_dir), "dataset": "arithmetic"}
    (output_dir / "grpo_lambda_run.json").write_text(json.dumps(record))
    result = run_launcher("--model", str(tiny_model_dir), "--args", f"--output_dir {output_dir} --max_steps 1")
    assert result.returncode == 1
    assert last_line(result).startswith("grpo_lambda: ") and "holds a grpo run" in last_line(result), result.stderr


def test_a_full_disk_is_one_line_naming_the_file_and_the_space_left(tmp_path, monkeypatch):
    exits = tmp_path / "exits.jsonl"
    monkeypatch.setenv(EXIT_FILE_VARIABLE, str(exits))
    target = tmp_path / "run" / "checkpoint-3" / "model.safetensors"

    def write():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    line = exit_status(write)
    assert line.startswith("grpo_lambda: no space left on device writing ") and str(target) in line
    assert " free on that disk" in line and "\n" not in line
    assert json.loads(exits.read_text()) == {"status": 1, "error": line.removeprefix("grpo_lambda: ")}

    def save_file(tensors, filename):  # safetensors' error carries the OS's text, no errno
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, message: "No space left on device" })')

    def checkpoint():
        try:
            save_file({}, filename=str(target))
        except RuntimeError as error:
            raise ValueError("saving failed") from error

    assert str(target) in exit_status(checkpoint)  # the file named by the writer's own argument
    with pytest.raises(ZeroDivisionError):  # any other error keeps its traceback
        exit_status(lambda: 1 / 0)


def planned(*argv: str) -> launch.Plan:
    return launch.plan(launch.parser().parse_args(list(argv)), REPO_ROOT)


def test_paths_start_where_the_command_runs(tmp_path, monkeypatch):
    """The trainer runs in the repository root: before, ARGS' --output_dir, --dataset_path and
    --resume_from_checkpoint, and a DATASET file, landed or were looked for there, not where the user ran it."""
    (tmp_path / "problems.jsonl").write_text('{"problem": "1 + 1", "answer": "2"}\n')
    monkeypatch.chdir(tmp_path)
    args = "--output_dir out --dataset_path problems.jsonl --resume_from_checkpoint true"
    argv = ["--accelerate", "cpu", "--model", "./model", "--dataset", "problems.jsonl", f"--args={args}"]
    settings = planned(*argv).settings
    assert settings.training.output_dir == str(tmp_path / "out")
    assert settings.script.dataset_path == str(tmp_path / "problems.jsonl")
    assert settings.model.model_name_or_path == str(tmp_path / "model")
    assert settings.script.dataset_name == str(tmp_path / "problems.jsonl")
    assert settings.training.resume_from_checkpoint == "true"
    # `make -C <repo>` runs in the repository; the Makefile passes the folder make was run from
    elsewhere = planned(*argv[:-1], "--args=--output_dir out", "--workdir", str(tmp_path / "elsewhere")).settings
    assert elsewhere.training.output_dir == str(tmp_path / "elsewhere" / "out")
    # the recipe's own relative output folder is relative to the repository, wherever the command runs
    monkeypatch.chdir(REPO_ROOT.parent)
    settings = planned("--accelerate", "cpu").settings
    assert settings.training.output_dir == str(
        REPO_ROOT / "data/SmolLM2-135M-Instruct/grpo/arithmetic_eps_trace-both-0.99"
    )


def test_options_a_combination_would_ignore_are_refused():
    recipe = str(REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml")
    refused = {
        ("--recipe", recipe, "--dataset", "gsm8k"): "--dataset would be ignored",
        ("--recipe", recipe, "--trace_lambda", "0.9"): "--trace_lambda would be ignored",
        ("--num-machines", "2", "--main-process-ip", "n1"): "ACCEL=cpu is one process on one machine",
        ("--main-process-ip", "n1"): "add --num-machines N",
        ("--args=--max_steps=1 --no_such_field 3",): "unrecognized arguments: --no_such_field 3",
    }
    for argv, message in refused.items():
        with pytest.raises(GRPOLambdaError, match=message):
            planned("--accelerate", "cpu", *argv)
    assert planned("--accelerate", "cpu", "--args=--max_steps=1").settings.training.max_steps == 1  # one token
    # the trainer refuses them too (a command that bypasses the launcher)
    with pytest.raises(GRPOLambdaError, match="dataset_path=x.jsonl would be ignored"):
        load_problem_dataset("arithmetic", path="x.jsonl", train_size=4, test_size=4, seed=0, level="one_step")
    with pytest.raises(GRPOLambdaError, match="dataset_config=socratic would be ignored: gsm8k always loads"):
        load_problem_dataset("gsm8k", config="socratic")


def test_a_malformed_local_copy_names_the_file_and_line_in_training_too(tmp_path):
    (tmp_path / "rows.json").write_text('[\n  {"problem": "1 + 1", "answer": "2"},\n  {"problem": }\n]\n')
    with pytest.raises(GRPOLambdaError, match=r"rows\.json line 3 column 15 is not JSON"):
        load_problem_dataset("mine", path=str(tmp_path / "rows.json"))


def test_evaluate_checks_the_model_and_the_output_folder_first(tmp_path, monkeypatch):
    """Before, a missing folder reached transformers ("Repo id must be in the form ...") or vLLM after their
    imports; an output folder that cannot be written failed after the first generations."""
    from grpo_lambda.evaluation import evaluate

    base = ["--backend", "transformers", "--benchmarks", "arithmetic", "--limit", "1"]
    with pytest.raises(GRPOLambdaError, match=r"model folder .*/no-model does not exist"):
        evaluate.main(["--model", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "out"), *base])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # conftest: HF_HUB_OFFLINE=1
    with pytest.raises(GRPOLambdaError, match=r"HF_HUB_OFFLINE=1 .* cache .*hub-cache"):
        evaluate.main(["--model", "some-org/some-model", "--output_dir", str(tmp_path / "out"), *base])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(GRPOLambdaError, match=r"a-file is a file, not a folder; choose another with OUTPUT"):
        evaluate.main(["--model", "embedded:SmolLM2-135M-Instruct", "--output_dir", str(tmp_path / "a-file/x"), *base])
