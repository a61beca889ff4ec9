"""metrics.jsonl's one writer and reader: a torn last line is skipped and then cut off, a corrupt line before it is
refused with its file and line; a resumed run logs each step once; the smoothing and statistics of its series."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.metrics_log import append, drop_after, logged_mean, logged_std, read, read_steps, trailing_mean


def step(number: int, **metrics) -> dict:
    return {"step": number, "loss": 0.5, "reward": 0.1 * number, **metrics}


def write_lines(path, records, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def test_append_writes_one_line_per_record_and_read_returns_them(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the folder is made on the first append
    records = [step(1), step(2, kl=0.01), {"step": 2, "train_runtime": 3.0}]
    for record in records:
        append(path, record)
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in records)
    assert read(path) == records


@pytest.mark.parametrize(
    "torn",
    [
        b'{"step": 3, "loss": 0.',  # killed mid-number
        b'{"step": 3, "reward": 1.0}'[:-1],  # killed before the closing brace
        '{"step": 3, "note": "λ'.encode()[:-1],  # killed in the middle of a two-byte character
    ],
)
def test_a_torn_last_line_is_skipped_and_the_next_append_cuts_it_off(tmp_path, torn):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [step(1), step(2)], torn)
    assert read(path) == [step(1), step(2)]  # also what a reader sees while a line is being written
    append(path, step(3))
    assert path.read_text() == "".join(json.dumps(step(n)) + "\n" for n in (1, 2, 3))


def test_a_last_line_missing_only_its_newline_is_a_record(tmp_path):
    """A prefix of a record's line never parses as a JSON object, so a last line that does is whole (a file
    written by hand without its final newline): it is read, and the next append starts a new line after it."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(step(1)) + "\n" + json.dumps(step(2)))
    assert read(path) == [step(1), step(2)]
    append(path, step(3))
    assert read(path) == [step(1), step(2), step(3)]


@pytest.mark.parametrize(
    "bad",
    [
        b'{"step": 2, "loss": 0.',  # a torn line that later records followed: the file was damaged, not killed
        b"[2, 0.5]",  # JSON, but not an object
        b'{"loss": 0.5}',  # an object without its step
        b"\x00\x00\x00\x00",  # blocks that never reached the disk
    ],
)
def test_a_corrupt_line_before_the_last_is_refused_with_its_file_and_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(json.dumps(step(1)).encode() + b"\n" + bad + b"\n" + json.dumps(step(3)).encode() + b"\n")
    for reader in (read, read_steps, lambda p: drop_after(p, 1)):
        with pytest.raises(GRPOLambdaError) as raised:
            reader(path)
        message = str(raised.value)
        assert message.startswith(f"{path}, line 2: ") and "corrupt" in message and "\n" not in message


def test_a_corrupt_whole_last_line_is_refused_too(tmp_path):
    """Only a line without its newline can be torn: the writer writes the newline last."""
    path = tmp_path / "metrics.jsonl"
    write_lines(path, [step(1)], b"not json\n")
    with pytest.raises(GRPOLambdaError, match=r", line 2: "):
        read(path)


def test_read_steps_gives_each_training_step_once_in_step_order(tmp_path):
    path = tmp_path / "metrics.jsonl"
    summary = {"step": 3, "train_runtime": 1.0, "train_loss": 0.4}
    write_lines(path, [step(2), step(1), step(3), step(2, reward=9.0), summary], b'{"step": 4, "lo')
    assert [(r["step"], r["reward"]) for r in read_steps(path)] == [(1, 0.1), (2, 9.0), (3, 0.1 * 3)]


def test_drop_after_keeps_the_records_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert drop_after(path, 3) == 0 and not path.exists()
    write_lines(path, [step(n) for n in range(1, 6)], b'{"step": 6, "lo')
    assert drop_after(path, 3) == 2
    assert path.read_text() == "".join(json.dumps(step(n)) + "\n" for n in (1, 2, 3))
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # the rewrite's temporary file is renamed over the log
    assert drop_after(path, 3) == 0 and read(path) == [step(1), step(2), step(3)]


@pytest.mark.parametrize(("checkpoint", "steps"), [(3, [1, 2, 3, 4]), (5, [1, 2, 3, 4, 5, 6])])
def test_a_run_killed_mid_write_resumes_with_each_step_once(tmp_path, checkpoint, steps):
    """Killed while writing step 6's record, resumed from checkpoint 3 (steps 4–5 and the torn line are dropped)
    or from checkpoint 5 (the torn line is cut off when step 6 is logged again)."""
    from grpo_lambda.callbacks import JsonlMetricsCallback

    path = tmp_path / "metrics.jsonl"
    write_lines(path, [step(n) for n in range(1, 6)], b'{"step": 6, "loss": 0.5, "rew')
    callback = JsonlMetricsCallback(path)
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, global_step=checkpoint), None)
    logged = SimpleNamespace(is_world_process_zero=True, global_step=checkpoint + 1)
    callback.on_log(None, logged, None, logs={"loss": 0.5, "reward": 1.0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == steps


def test_smoothing_is_a_trailing_mean_over_the_logged_values():
    assert trailing_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert trailing_mean([1.0, 2.0, 3.0, 4.0], 10) == [1.0, 1.5, 2.0, 2.5]
    # a metric absent (None) or failed (NaN) at a step is left out of the windows that hold it
    smoothed = trailing_mean([1.0, None, float("nan"), 5.0], 2)
    assert smoothed[:2] == [1.0, 1.0] and math.isnan(smoothed[2]) and smoothed[3] == 5.0


def test_mean_and_std_of_logged_values():
    assert logged_mean([1.0, None, 3.0, float("nan")]) == 2.0
    assert logged_std([1.0, None, 3.0, float("nan")]) == pytest.approx(math.sqrt(2.0))  # sample std (n − 1)
    assert math.isnan(logged_mean([None, float("nan")])) and math.isnan(logged_mean([]))
    assert logged_std([4.0]) == 0.0 and logged_std([]) == 0.0


def test_the_log_and_the_plots_load_without_the_training_stack():
    code = (
        "import sys, grpo_lambda.metrics_log, grpo_lambda.evaluation.plots;"
        "print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.strip() == "[]"
