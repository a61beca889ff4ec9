"""The project's one exception type, and how an entry point ends.

Library code raises `GRPOLambdaError` with a one-line message that names the thing at fault and the fix; only entry
points (`__main__` blocks) print it, prefixed with `grpo_lambda:`, and exit non-zero. It is a `ValueError`, so
callers that already catch bad values catch it too. A full disk (ENOSPC, or a quota: EDQUOT) anywhere under an entry
point also ends in one line, naming the file and the space left on its disk. Under the launcher, each process that
ends otherwise than with 0 appends how (`{"status": …, "error": one line or null}`) to the file $GRPO_LAMBDA_EXIT_FILE
names: accelerate reports every failure as status 1, after its own traceback; the launcher prints the line last and
tells a stop at a checkpoint (status 75) from a failure.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

EXIT_FILE_VARIABLE = "GRPO_LAMBDA_EXIT_FILE"
_DISK_FULL = {errno.ENOSPC: os.strerror(errno.ENOSPC), errno.EDQUOT: os.strerror(errno.EDQUOT)}
# where a writer keeps the file it writes: safetensors' save_file(filename), torch.save(f), save_pretrained(dir)
_FILE_LOCALS = ("filename", "file", "f", "path", "save_directory", "output_dir")


class GRPOLambdaError(ValueError):
    """A user-facing error: its message is one line saying what is wrong and how to fix it."""


def exit_status(main, *args) -> int | str | None:
    """What an entry point's `__main__` block passes to `sys.exit`: `main(*args)`'s return code, or for a
    GRPOLambdaError or a full disk its one line (`grpo_lambda: …`, printed to stderr with exit status 1)."""
    try:
        status = main(*args)
    except GRPOLambdaError as error:
        return _report(str(error))
    except Exception as error:
        full = disk_full_message(error)
        if full is None:
            record_exit(1, None)
            raise
        return _report(full)
    if status:
        record_exit(status, None)
    return status


def _report(message: str) -> str:
    line = " ".join(message.split())
    record_exit(1, line)
    return f"grpo_lambda: {line}"


def record_exit(status, error: str | None) -> None:
    """Append how this process ended to $GRPO_LAMBDA_EXIT_FILE (set by the launcher; several ranks may append)."""
    destination = os.environ.get(EXIT_FILE_VARIABLE)
    if not destination:
        return
    try:
        with open(destination, "a") as stream:  # one short line per write: O_APPEND keeps the lines whole
            stream.write(json.dumps({"status": status if isinstance(status, int) else 1, "error": error}) + "\n")
    except OSError:
        pass  # the line still reaches stderr, where the launcher points


def disk_full_message(error: BaseException) -> str | None:
    """One line for an error caused by a full disk or quota (an OSError ENOSPC / EDQUOT anywhere in its chain, or a
    library error that carries the OS's text, as safetensors' does), else None."""
    seen, cause, text = set(), error, None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            text, file = _DISK_FULL[cause.errno], cause.filename or cause.filename2
            break
        text = next((t for t in _DISK_FULL.values() if t in str(cause)), None)
        if text is not None:
            file = None
            break
        cause = cause.__cause__ or cause.__context__
    if text is None:
        return None
    file = os.fspath(file) if file is not None else (_file_being_written(cause) or _file_being_written(error))
    free = _free_space(Path(file or os.getcwd()))
    where = f"writing {os.path.abspath(file)}" if file else f"in {os.getcwd()} (the file is in the traceback)"
    return (
        f"{text.lower()} {where}; {free} free on that disk. Free space there, or write elsewhere "
        "(--output_dir; HF_HOME for downloads)."
    )


def _file_being_written(error: BaseException) -> str | None:
    """The path a writer held when the error left it (innermost frame first), when it kept one under a usual name."""
    frames, trace = [], error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame)
        trace = trace.tb_next
    for frame in reversed(frames):
        for name in _FILE_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and os.fspath(value):
                return os.fspath(value)
    return None


def _free_space(path: Path) -> str:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return ""
