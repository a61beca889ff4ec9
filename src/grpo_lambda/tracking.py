"""Where a training run reports to wandb: online when you are logged in and the wandb server answers, offline
otherwise, never a login prompt.

Logged in means WANDB_API_KEY is set or the netrc file (NETRC, else ~/.netrc) has an entry for the wandb server
(WANDB_BASE_URL, default https://api.wandb.ai), which is what `wandb login` writes. A logged-in run first asks the
server for an answer, at most SERVER_CHECK_S seconds (through the proxies your environment names, as wandb would):
on a GPU node without internet, wandb.init would otherwise fail with CommError after ~40 s and end the run. A
WANDB_MODE you set wins, unchecked. The run's wandb files go to <output_dir>/wandb (WANDB_DIR, unless you set it),
so an offline run is uploaded later, from a machine with network, with `wandb sync <output_dir>/wandb/offline-run-*`.

One wandb run per training run: its id is kept in <output_dir>/wandb_run_id (WANDB_RUN_ID, with WANDB_RESUME=allow),
so a resumed, requeued or rerun training goes on logging into the same wandb run instead of starting a new one.
"""

from __future__ import annotations

import http.client
import logging
import netrc
import os
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit

from .records import replace_file

logger = logging.getLogger(__name__)
DEFAULT_SERVER = "https://api.wandb.ai"
DEFAULT_PROJECT = "grpo-lambda"
RUN_ID_FILE = "wandb_run_id"
SERVER_CHECK_S = 5.0


def wandb_run_id(output_dir: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """The wandb run id of the training run in `output_dir`: the one kept there, else a new one, which the process of
    rank 0 keeps (only it reports to wandb)."""
    path = Path(output_dir) / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], as wandb's own ids
    if environ.get("RANK", "0") == "0":
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(path, run_id + "\n")
    return run_id


def wandb_login_source(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Where wandb would find an API key (WANDB_API_KEY or the netrc file), or None."""
    if environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    path = Path(environ.get("NETRC") or Path(environ.get("HOME") or Path.home()) / ".netrc")
    host = urlsplit(environ.get("WANDB_BASE_URL") or DEFAULT_SERVER).netloc
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return str(path) if entry and entry[2] else None


def wandb_server_answers(url: str, timeout_s: float = SERVER_CHECK_S) -> bool:
    """Whether the server at `url` answers an HTTP request (any status) within `timeout_s`, name resolution
    included (which has no timeout of its own: the request runs in a thread that is left behind if it hangs)."""
    answered: list[bool] = []

    def ask() -> None:
        try:
            # a new opener: its proxies are read from the environment now (urlopen's are read once per process)
            urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
        except urllib.error.HTTPError:  # an answer: the server is there
            pass
        except (OSError, ValueError, http.client.HTTPException):
            return
        answered.append(True)

    thread = threading.Thread(target=ask, name="wandb-server-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(answered)


def configure_wandb(
    report_to: list[str] | str | None,
    output_dir: str,
    environ: MutableMapping[str, str] = os.environ,
    check_s: float = SERVER_CHECK_S,
) -> str:
    """Set WANDB_MODE / WANDB_DIR / WANDB_PROJECT for a run that reports to wandb and return the line that says which
    mode it is in and how to sync ('' when the run does not report to wandb). Call it before the trainer exists.
    `check_s`: how long a logged-in run waits for the wandb server before it goes offline."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "wandb" not in targets and "all" not in targets:
        return ""
    environ.setdefault("WANDB_DIR", str(output_dir))
    environ.setdefault("WANDB_PROJECT", DEFAULT_PROJECT)
    Path(environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    environ.setdefault("WANDB_RUN_ID", wandb_run_id(output_dir, environ))
    environ.setdefault("WANDB_RESUME", "allow")  # the same run across resumes and requeues
    where = f"project {environ['WANDB_PROJECT']}, run {environ['WANDB_RUN_ID']}, files in {environ['WANDB_DIR']}/wandb"
    sync = f"upload it later with `wandb sync {environ['WANDB_DIR']}/wandb/offline-run-*`"
    if environ.get("WANDB_MODE"):
        mode = environ["WANDB_MODE"]
        tail = f"; {sync}" if mode == "offline" else ""
        return f"wandb: {mode} (WANDB_MODE set in your environment), {where}{tail}"
    source = wandb_login_source(environ)
    server = environ.get("WANDB_BASE_URL") or DEFAULT_SERVER
    if source and wandb_server_answers(server, check_s):
        environ["WANDB_MODE"] = "online"
        return f"wandb: online (logged in through {source}), {where}"
    if source:
        environ["WANDB_MODE"] = "offline"
        return (
            f"wandb: offline (logged in through {source}, but {server} did not answer within {check_s:g} s: no "
            f"network on this node?), {where}; {sync}"
        )
    environ["WANDB_MODE"] = "offline"
    return f"wandb: offline (not logged in: `wandb login` or WANDB_API_KEY for online runs), {where}; {sync}"


def announce_wandb(report_to, output_dir: str) -> None:
    """configure_wandb, with its line logged once (by the process of rank 0)."""
    line = configure_wandb(report_to, output_dir)
    if line and os.environ.get("RANK", "0") == "0":
        logger.info(line)
