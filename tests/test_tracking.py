"""wandb reporting: online when logged in (WANDB_API_KEY or a netrc entry for the wandb server), offline otherwise,
a WANDB_MODE you set wins, and the line a run prints says which and how to upload an offline run."""

from grpo_lambda.tracking import configure_wandb


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
