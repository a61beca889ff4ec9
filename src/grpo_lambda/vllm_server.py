"""Training against a vLLM server (TRL's `vllm_mode: server`): the address the trainer's client uses and the wait
for the server to answer. Starting a server is the launcher's business (grpo_lambda.jobs.launch)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

from grpo_lambda.errors import GRPOLambdaError


def vllm_server_url(training_args) -> str:
    """The address TRL's client connects to (its vllm_server_base_url, else host and port)."""
    if training_args.vllm_server_base_url:
        return training_args.vllm_server_base_url.rstrip("/")
    return f"http://{training_args.vllm_server_host}:{training_args.vllm_server_port}"


def wait_for_vllm_server(
    url: str, timeout_s: float, server: subprocess.Popen | None = None, log: str = "", model: str | None = None
) -> None:
    """Returns once `<url>/health` answers 200 and, given `model`, the server serves it (`<url>/v1/models`): a server
    of another run on the same node and port is refused. Raises with one line naming the address after `timeout_s`
    seconds, or as soon as `server`, the process that was to serve it, has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                if response.status == 200:
                    if model is not None:
                        _check_served_model(url, model)
                    return
        except (urllib.error.URLError, OSError):
            pass
        if server is not None and server.poll() is not None:
            raise GRPOLambdaError(
                f"the vLLM server for {url} exited with code {server.returncode} before it was up"
                + (f"; its log: {log}" if log else ".")
            )
        if time.monotonic() >= deadline:
            raise GRPOLambdaError(
                f"no vLLM server answered at {url}/health within {timeout_s:g} s (vllm_server_timeout); start one "
                "there (`make train VLLM_MODE=server` starts its own) or raise vllm_server_timeout."
            )
        time.sleep(2)


def _check_served_model(url: str, model: str) -> None:
    """Raises unless the server at `url` lists `model` among the models it serves (vLLM's OpenAI API)."""
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
            listed = json.loads(response.read())["data"]
        served = {entry.get("id") for entry in listed} | {entry.get("root") for entry in listed}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
        raise GRPOLambdaError(
            f"cannot tell which model the vLLM server at {url} serves ({url}/v1/models: {error}): start this run's own "
            "server (make train VLLM_MODE=server, or a sweep task) or point vllm_server_base_url at one."
        ) from None
    if model not in served:
        raise GRPOLambdaError(
            f"the vLLM server at {url} serves {', '.join(sorted(s for s in served if s))}, not this run's model {model}: "
            "another run's server on this node and port? Give this run its own port (vllm_server_port)."
        )
