"""wandb reporting: online when logged in (WANDB_API_KEY or a netrc entry for the wandb server) and the server
answers, offline otherwise (a node without network: within seconds), a WANDB_MODE you set wins, and the line a run
prints says which and how to upload an offline run. The wandb servers here are local sockets: no traffic leaves this
machine."""

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO_ROOT
from grpo_lambda.tracking import RUN_ID_FILE, configure_wandb


def environment(tmp_path, **variables) -> dict:
    return {"HOME": str(tmp_path / "home"), **variables}


class Unreachable:
    """A server that takes connections and never answers (a firewall that drops, a node without a route behaves the
    same for the client: nothing comes back); counts the connections it got."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.sock.accept()[0])

    def close(self):
        self.sock.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def unreachable():
    server = Unreachable()
    yield server
    server.close()


@pytest.fixture
def wandb_server():
    """A local HTTP server that answers every request with 404 (an answer all the same)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_not_logged_in_is_offline_with_the_sync_command(tmp_path):
    env = environment(tmp_path)
    line = configure_wandb(["wandb"], str(tmp_path / "run"), env)
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path / "run")
    assert (
        line.startswith("wandb: offline (not logged in")
        and f"wandb sync {tmp_path / 'run'}/wandb/offline-run-*" in line
    )
    assert (tmp_path / "run").is_dir() and env["WANDB_PROJECT"] == "grpo-lambda"


def test_api_key_or_netrc_entry_is_online_where_the_server_answers(tmp_path, wandb_server):
    env = environment(tmp_path, WANDB_API_KEY="k" * 40, WANDB_BASE_URL=wandb_server)
    assert "online (logged in through WANDB_API_KEY)" in configure_wandb("wandb", str(tmp_path), env)
    assert env["WANDB_MODE"] == "online"

    netrc = tmp_path / "netrc"
    host = wandb_server.removeprefix("http://")
    netrc.write_text(f"machine {host}\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    env = environment(tmp_path, NETRC=str(netrc), WANDB_BASE_URL=wandb_server)
    assert f"online (logged in through {netrc})" in configure_wandb(["wandb"], str(tmp_path), env)
    # an entry for another server does not log in to this one
    env = environment(tmp_path, NETRC=str(netrc), WANDB_BASE_URL="https://wandb.example.org")
    assert "offline (not logged in" in configure_wandb(["wandb"], str(tmp_path), env)
    assert env["WANDB_MODE"] == "offline"


def test_the_check_goes_through_the_proxy_the_environment_names(tmp_path, wandb_server, monkeypatch):
    """Nodes that reach the internet only through a proxy (HTTPS_PROXY / HTTP_PROXY, which wandb uses too)."""
    monkeypatch.setenv("http_proxy", wandb_server)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    env = environment(tmp_path, WANDB_API_KEY="k" * 40, WANDB_BASE_URL="http://wandb.invalid")
    assert "online (logged in through WANDB_API_KEY)" in configure_wandb("wandb", str(tmp_path), env)


def test_logged_in_without_network_is_offline_within_seconds(tmp_path, unreachable):
    """Before, a logged-in run went online on a node without internet, and wandb.init failed ~40 s later."""
    env = environment(tmp_path, WANDB_API_KEY="k" * 40, WANDB_BASE_URL=unreachable.url)
    start = time.monotonic()
    line = configure_wandb(["wandb"], str(tmp_path / "run"), env, check_s=2.0)
    assert time.monotonic() - start < 3.0 and env["WANDB_MODE"] == "offline"
    assert line.startswith(f"wandb: offline (logged in through WANDB_API_KEY, but {unreachable.url} did not answer")
    assert f"wandb sync {tmp_path / 'run'}/wandb/offline-run-*" in line and len(unreachable.connections) == 1


def test_the_users_settings_win_and_other_reporters_are_left_alone(tmp_path):
    env = environment(tmp_path, WANDB_MODE="disabled", WANDB_API_KEY="k" * 40, WANDB_DIR=str(tmp_path / "w"))
    assert configure_wandb(["wandb"], str(tmp_path / "run"), env).startswith("wandb: disabled (WANDB_MODE set")
    assert env["WANDB_MODE"] == "disabled" and env["WANDB_DIR"] == str(tmp_path / "w")
    env = environment(tmp_path)
    assert configure_wandb(["tensorboard"], str(tmp_path), env) == "" and "WANDB_MODE" not in env
    assert configure_wandb([], str(tmp_path), env) == "" and configure_wandb("none", str(tmp_path), env) == ""


def test_a_resumed_run_logs_into_the_same_wandb_run(tmp_path):
    """Each start of a training run (a requeue, a rerun) configures wandb afresh; they all get the run id kept in the
    run folder, and wandb itself resumes that run (checked with two offline wandb.init calls)."""
    first, second, other = environment(tmp_path), environment(tmp_path), environment(tmp_path)
    configure_wandb(["wandb"], str(tmp_path / "run"), first)
    line = configure_wandb(["wandb"], str(tmp_path / "run"), second)
    configure_wandb(["wandb"], str(tmp_path / "other"), other)
    run_id = (tmp_path / "run" / RUN_ID_FILE).read_text().strip()
    assert first["WANDB_RUN_ID"] == second["WANDB_RUN_ID"] == run_id != other["WANDB_RUN_ID"]
    assert second["WANDB_RESUME"] == "allow" and f"run {run_id}" in line

    starts = "import wandb\nfor _ in range(2):\n    run = wandb.init()\n    print(run.id)\n    run.finish()\n"
    env = {**os.environ, **first, "WANDB_SILENT": "true"}
    ids = subprocess.run([sys.executable, "-c", starts], env=env, capture_output=True, text=True, check=True).stdout
    assert ids.split() == [run_id, run_id]
    folders = [p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*")]
    assert len(folders) == 2 and all(f"-{run_id}" in name for name in folders), folders


@pytest.mark.slow
def test_a_logged_in_run_on_a_node_without_network_trains_offline(tiny_model_dir, tmp_path, unreachable):
    """A real GRPO run that reports to wandb, logged in (WANDB_API_KEY), WANDB_MODE unset, its wandb server one that
    never answers: it says it is offline and how to sync, trains, and leaves an offline wandb run to upload; the
    server saw the one check and nothing from wandb itself."""
    output_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_API_KEY="k" * 40, WANDB_BASE_URL=unreachable.url)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    recipe = REPO_ROOT / "recipes/default/grpo/config_arithmetic_grpo.yaml"
    command = [sys.executable, "-m", "grpo_lambda.testbench.train", "grpo", "--config", str(recipe)]
    command += ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(output_dir), "--use_cpu", "true"]
    command += ["--max_steps", "1", "--num_generations", "2", "--per_device_train_batch_size", "2"]
    command += ["--max_completion_length", "4", "--report_to", "wandb"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    lines = [line for line in log.splitlines() if "wandb: offline (logged in through WANDB_API_KEY, but" in line]
    assert len(lines) == 1 and "did not answer within 5 s" in lines[0] and "wandb sync" in lines[0], log[-3000:]
    assert list((output_dir / "wandb").glob("offline-run-*")), log[-3000:]
    assert len(unreachable.connections) == 1
