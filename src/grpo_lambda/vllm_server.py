"""Training against a vLLM server (TRL's `vllm_mode: server`): the address the trainer's client uses and the wait
for the server to answer. Starting a server is the launcher's business (grpo_lambda.jobs.launch)."""

from __future__ import annotations

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


def wait_for_vllm_server(url: str, timeout_s: float, server: subprocess.Popen | None = None, log: str = "") -> None:
    """Returns once `<url>/health` answers 200. Raises with one line naming the address after `timeout_s` seconds,
    or as soon as `server`, the process that was to serve it, has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                if response.status == 200:
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
