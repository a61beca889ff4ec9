"""wandb reporting: online when logged in (WANDB_API_KEY or a netrc entry for the wandb server), offline otherwise,
a WANDB_MODE you set wins, and the line a run prints says which and how to upload an offline run."""

import os
import subprocess
import sys

from grpo_lambda.tracking import RUN_ID_FILE, configure_wandb


def environment(tmp_path, **variables) -> dict:
    return {"HOME": str(tmp_path / "home"), **variables}


def test_not_logged_in_is_offline_with_the_sync_command(tmp_path):
    env = environment(tmp_path)
    line = configure_wandb(["wandb"], str(tmp_path / "run"), env)
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path / "run")
    assert (
        line.startswith("wandb: offline (not logged in")
        and f"wandb sync {tmp_path / 'run'}/wandb/offline-run-*" in line
    )
    assert (tmp_path / "run").is_dir() and env["WANDB_PROJECT"] == "grpo-lambda"


def test_api_key_or_netrc_entry_is_online(tmp_path):
    env = environment(tmp_path, WANDB_API_KEY="k" * 40)
    assert "online (logged in through WANDB_API_KEY)" in configure_wandb("wandb", str(tmp_path), env)
    assert env["WANDB_MODE"] == "online"

    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    env = environment(tmp_path, NETRC=str(netrc))
    assert f"online (logged in through {netrc})" in configure_wandb(["wandb"], str(tmp_path), env)
    # an entry for another server does not log in to this one
    env = environment(tmp_path, NETRC=str(netrc), WANDB_BASE_URL="https://wandb.example.org")
    assert "offline" in configure_wandb(["wandb"], str(tmp_path), env) and env["WANDB_MODE"] == "offline"


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
