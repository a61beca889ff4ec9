"""Run state on disk, one discipline for every file a run or an evaluation keeps (metrics.jsonl, samples.jsonl,
results.json): append-only JSONL stores, and whole files replaced through a rename.

A JSONL store is appended one line at a time, flushed, so a kill (or a full disk) can only tear its last line. On
reading, a torn last line is skipped (it may also be a line being written right now); before appending, it is cut
off, with one logged line saying so. A bad line anywhere else is corruption: refused with the file and the line
number, never skipped or rewritten away. A file written whole goes to a temporary name beside it and is renamed over
the old one, so an interruption leaves the old file intact.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .errors import GRPOLambdaError

logger = logging.getLogger(__name__)


def _parse(line: bytes, is_record: Callable[[dict], bool]) -> dict | None:
    """The record on one line, or None if it holds none. A prefix of a record's line is never a whole JSON object,
    so a last line that parses lacks only its newline and is a record."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, or UnicodeDecodeError from a multi-byte character cut in half
        return None
    return record if isinstance(record, dict) and is_record(record) else None


def read_jsonl(path: Path, is_record: Callable[[dict], bool], what: str) -> list[dict]:
    """Every record of the store, in file order ([] if the file does not exist). A torn last line is skipped; a bad
    line before it raises GRPOLambdaError naming the file and the line. `what` names a record in that message."""
    path = Path(path)
    if not path.is_file():
        return []
    *lines, last = path.read_bytes().split(b"\n")  # `last`: what follows the last newline, b"" in a whole file
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(line, is_record)
        if record is None:
            raise GRPOLambdaError(
                f"{path}, line {number}: not {what}, so the file is corrupt; delete or repair that line (only a torn "
                "last line, from a kill mid-write, is skipped)."
            )
        records.append(record)
    record = _parse(last, is_record) if last.strip() else None
    return records if record is None else [*records, record]


def has_torn_last_line(path: Path, is_record: Callable[[dict], bool]) -> bool:
    """Whether the store ends in a torn line (a write interrupted) that `read_jsonl` skips."""
    path = Path(path)
    if not path.is_file():
        return False
    last = path.read_bytes().rsplit(b"\n", 1)[-1]
    return bool(last.strip()) and _parse(last, is_record) is None


def append_jsonl(path: Path, record: dict, is_record: Callable[[dict], bool]) -> None:
    """Appends `record` as one line, flushed, after cutting off a torn last line (left by a kill mid-write)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size:
            stream.seek(size - 1)
            if stream.read(1) != b"\n":
                stream.seek(0)
                text = stream.read()
                start = text.rfind(b"\n") + 1
                if _parse(text[start:], is_record) is None:
                    logger.warning("%s: cut off a torn last line (%d bytes, a write interrupted)", path, size - start)
                    stream.truncate(start)
                else:
                    stream.write(b"\n")
        stream.write(json.dumps(record).encode() + b"\n")
        stream.flush()


def replace_file(path: Path, text: str) -> None:
    """Writes `text` to `path` whole: to a temporary name beside it, flushed to disk, then renamed over `path`."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    with staging.open("w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)


def replace_jsonl(path: Path, records: list[dict]) -> None:
    """The store rewritten whole with `records` (replace_file)."""
    replace_file(path, "".join(json.dumps(record) + "\n" for record in records))


LOCK = ".grpo_lambda.lock"  # in an output folder a command writes (training, evaluation)


def hold_folder(folder: Path, what: str) -> int:
    """An exclusive lock on the output folder `folder` (flock on its LOCK file), or GRPOLambdaError in one line when
    another command holds it. Returns the open descriptor: the lock lasts until every process holding it (the
    command and the children it is passed to) has exited, a SIGKILL included, so two commands never write one
    folder, even where a killed command's trainers still finish their step."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise GRPOLambdaError(
            f"{folder} is in use by another {what} (it holds {folder / LOCK}): wait for it to end or stop it; a "
            "command killed with SIGKILL may leave its trainers finishing their step for a while."
        ) from None
    return descriptor
