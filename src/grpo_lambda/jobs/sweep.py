"""Sweeps on SLURM: a grid of training runs as one array job, each run followed by its evaluation.

    python -m grpo_lambda.jobs.sweep list   paper-1.5b              # index, state, recipe, output folder of every run
    python -m grpo_lambda.jobs.sweep submit paper-1.5b [--dry-run]  # sbatch the array (runs neither finished nor
                                                                    # queued) + aggregation [--sbatch-args "..."]
    python -m grpo_lambda.jobs.sweep run    paper-1.5b --index 3    # one array task (slurm/sweep.slurm calls this)
    python -m grpo_lambda.jobs.sweep run --recipe R --run-dir D     # one run without a sweep (slurm/train.slurm)
    python -m grpo_lambda.jobs.sweep aggregate paper-1.5b           # <output>/results.md: the paper's tables beside yours

A sweep is recipes/sweeps/<name>.yaml (or any path): either a slice of the paper's grid (the recipe files that
scripts/generate_recipes.py writes from recipes/paper_grid.yaml) or one base recipe with named variants. Every run's
settings (its recipe plus the sweep's) and the evaluation's are parsed when the sweep is read, by the parsers the
trainer and the evaluation use. Each run lives in <output_dir>/<model>/grpo/<dataset>_<tag>/ (the layout `make
tables` matches): recipe.yaml and grpo_lambda_run.json (the launcher's and the trainer's records), run.json (sweep,
index, overrides, git commit), attempts.jsonl (every start, preemption and finish), metrics.jsonl, checkpoints, the
final model, eval/{samples.jsonl,results.json}. A run is finished when eval/results.json exists; a resubmitted sweep
skips it, and skips runs that an array job it submitted (<output_dir>/submissions.jsonl) still holds in SLURM's
queue. Cluster policy (`slurm:` account, partition, qos, constraint, time, sbatch_args, plus `--sbatch-args`)
reaches every job the sweep submits. `hf_home:` sets HF_HOME for the sweep's jobs (jobs.download fills it).

Preemption: the jobs ask SLURM for SIGUSR1 `signal_seconds` before their time limit and are requeue-able. The runner
(the batch shell itself, through exec) runs its stages under grpo_lambda.processes.Supervisor: the signal creates <run
dir>/STOP_REQUESTED, the trainers save a checkpoint at the end of the step and exit, the task requeues itself
(`scontrol requeue`) and resumes from that checkpoint; an evaluation is stopped and resumes from its samples.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import getpass
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo_lambda.errors import EXIT_FILE_VARIABLE, GRPOLambdaError, exit_status
from grpo_lambda.evaluation.config import EvalConfig, as_flags, check_fields, given_fields
from grpo_lambda.jobs.launch import style_values, vllm_server_command
from grpo_lambda.jobs.recipes import expand_grid, load_grid, sft_path
from grpo_lambda.layout import repo_root
from grpo_lambda.methods import Method, RunFolder, SFTFolder
from grpo_lambda.preemption import EXIT_PREEMPTED, STOP_FILE
from grpo_lambda.processes import FORWARDED, Stopped, Supervisor, guard_process_tree
from grpo_lambda.records import append_jsonl, read_jsonl, replace_file
from grpo_lambda.reruns import final_step
from grpo_lambda.vllm_server import wait_for_vllm_server

SWEEP_KEYS = {"description", "output_dir", "hf_home", "runs", "evaluation", "slurm"}
PAPER_RUN_KEYS = {"paper_grid", "sizes", "models", "datasets", "model_path", "settings", "styles", "sft"}
VARIANT_RUN_KEYS = {"recipe", "model", "dataset", "settings", "variants", "styles", "sft"}
SFT_KEYS = {"recipe", "settings"}
# Cluster policy: given once (here, or `make sweep SBATCH_ARGS="..."`), passed to every job a sweep submits.
CLUSTER_KEYS = ("account", "partition", "qos", "constraint", "time")
SLURM_DEFAULTS = {
    "job_name": None,  # default: grpo-lambda-<sweep name>
    "account": None,
    "partition": None,
    "qos": None,
    "constraint": None,
    "time": None,
    "nodes": 1,  # > 1: the last node serves generations with TRL's vLLM server, the others train (waiting for it)
    "gpus_per_node": None,
    "cpus_per_task": None,
    "mem": None,
    "throttle": None,  # at most this many array tasks at once (`--array=...%N`)
    "signal_seconds": 300,  # SIGUSR1 this long before the time limit
    "accelerate": "auto",  # recipes/accelerate_configs/<name>.yaml; auto: zero2 with GPUs, cpu without
    "vllm_tensor_parallel_size": 1,  # GPUs of the serving node that vLLM shards the model over
    "sbatch_args": [],  # any other sbatch flags for every job, e.g. ["--reservation=abc"]
}


def _fail(message: str):
    raise GRPOLambdaError(message)


def _check_keys(section: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        _fail(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(sorted(allowed))}.")


@dataclass(frozen=True)
class SweepRun:
    """One training run (and its evaluation) of a sweep."""

    index: int
    name: str  # grpo_lambda.methods.RunFolder's <model tail>/grpo/<dataset>_<method tag>, as `make tables` reads it
    recipe: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # settings on top of the recipe
    settings: Any = None  # configs.Settings: the recipe plus the overrides, as the trainer parses them
    style: str | None = None  # a recipe style over the recipe (recipes/styles/<style>.yaml); None: the paper's
    stage: str = "grpo"  # sft: the format SFT a model's RL runs start from (§4.2)
    after: int | None = None  # the index of the SFT run (in Sweep.sft_runs) whose output this run starts from


@dataclass
class Sweep:
    name: str
    path: Path
    output_dir: Path
    runs: list[SweepRun]
    evaluation: dict  # EvalConfig fields (checked when the sweep is read)
    slurm: dict
    hf_home: str | None = None  # the Hugging Face cache of the sweep's jobs (HF_HOME); None: the environment's
    sft_runs: list[SweepRun] = field(default_factory=list)  # run first; an RL run's `after` names its SFT run

    def run_dir(self, run: SweepRun) -> Path:
        return self.output_dir / run.name


def resolve_run(recipe: Path, overrides: dict, style: str | None = None, stage: str = "grpo", served: bool = False):
    """A run's settings: its recipe, its recipe style and `overrides` on top, parsed once by the trainer's parser (on
    a login node without GPUs too). `served`: a task of several nodes, whose RL trainers generate through the vLLM
    server on its last node (Runner.training_commands), so the server's settings apply."""
    from grpo_lambda.configs import read_recipe, resolve_settings

    values = {**read_recipe(recipe), **style_values(repo_root(), style), **overrides}
    if served and stage == "grpo":
        values.update(use_vllm=True, vllm_mode="server")
    return resolve_settings(stage, values, for_reading=True)


def _sft_run(index: int, recipe: Path, overrides: dict) -> SweepRun:
    """An SFT run of a sweep, in `<model>/sft/<dataset>` (methods.SFTFolder) of the sweep's output folder."""
    if not recipe.is_file():
        _fail(f"no SFT recipe {recipe} (paths are relative to the repository root).")
    settings = resolve_run(recipe, overrides, stage="sft")
    name = SFTFolder(settings.model.model_name_or_path, settings.script.dataset_name).name
    return SweepRun(index, name, recipe, overrides, settings, stage="sft")


def _styles(spec: dict) -> list[str | None]:
    """`runs.styles`: the recipe styles every run is crossed with (paper: the recipe as it is)."""
    styles = spec.get("styles") or ["paper"]
    return [None if style == "paper" else str(style) for style in styles]


def _paper_runs(spec: dict, root: Path, output: Path, served: bool) -> tuple[list[SweepRun], list[SweepRun]]:
    """(SFT runs, RL runs) of a slice of the paper grid: unless `sft: false`, each model's format SFT (§4.2, its
    recipe in recipes/<model>/sft/) first, and every RL run of the model from its output (a model in `model_path`
    starts from the folder given there instead)."""
    _check_keys(spec, PAPER_RUN_KEYS, "runs (a slice of the paper grid)")
    grid = load_grid(root)
    runs = [
        run
        for run in expand_grid(grid)
        if (not spec.get("sizes") or run.size in spec["sizes"])
        and (not spec.get("models") or run.model_id in spec["models"])
        and (not spec.get("datasets") or run.dataset in spec["datasets"])
    ]
    model_path = spec.get("model_path") or {}  # e.g. the SFT checkpoint each model starts from (§4.2)
    unknown = sorted(set(model_path) - {run.model_id for run in runs})
    if unknown:
        _fail(f"model_path names models outside the sweep: {', '.join(unknown)}.")
    settings = dict(spec.get("settings") or {})  # trainer fields for every run, e.g. save_total_limit
    fields = sorted(set(settings) & {f.name for f in dataclasses.fields(Method)})
    if fields:  # a paper-grid run's folder names its method: settings must not change it behind the name's back
        _fail(
            f"runs.settings of a paper-grid sweep sets {', '.join(fields)}, which the run folders' method tags name; "
            "use a variant sweep."
        )
    sft_runs: dict[str, SweepRun] = {}
    if spec.get("sft", True):
        for model_id in dict.fromkeys(run.model_id for run in runs if run.model_id not in model_path):
            recipe = root / sft_path(model_id, grid["sft_dataset"])
            sft_runs[model_id] = _sft_run(len(sft_runs), recipe, {})
    sweep_runs = []
    for style in _styles(spec):
        for run in runs:
            overrides, sft = {**settings}, sft_runs.get(run.model_id)
            if run.model_id in model_path:
                overrides["model_name_or_path"] = str((root / model_path[run.model_id]).resolve())
            elif sft is not None:
                overrides["model_name_or_path"] = str(output / sft.name)
            name = RunFolder(run.model_id, run.dataset, run.method, style=style).name
            resolved = resolve_run(root / run.path, overrides, style, served=served)
            after = sft.index if sft else None
            sweep_runs.append(
                SweepRun(len(sweep_runs), name, root / run.path, overrides, resolved, style, after=after)
            )
    return list(sft_runs.values()), sweep_runs


def _variant_runs(spec: dict, root: Path, output: Path, served: bool) -> tuple[list[SweepRun], list[SweepRun]]:
    """(SFT runs, RL runs) of a base recipe with variants; `sft: {recipe, settings}` trains the model by SFT first and
    every variant from its output."""
    _check_keys(spec, VARIANT_RUN_KEYS, "runs (a base recipe with variants)")
    for key in ("recipe", "variants"):
        if key not in spec:
            _fail(f"runs needs `{key}` (or `paper_grid: true` for a slice of the paper grid).")
    recipe = root / spec["recipe"]
    if not recipe.is_file():
        _fail(f"no recipe {spec['recipe']} (paths are relative to the repository root).")
    common = dict(spec.get("settings") or {})
    common.update(
        {k: v for k, v in (("model_name_or_path", spec.get("model")), ("dataset_name", spec.get("dataset"))) if v}
    )
    sft = None
    if spec.get("sft"):
        _check_keys(spec["sft"], SFT_KEYS, "runs.sft")
        base = {"model_name_or_path": common["model_name_or_path"]} if "model_name_or_path" in common else {}
        sft = _sft_run(0, root / spec["sft"].get("recipe", ""), {**base, **(spec["sft"].get("settings") or {})})
    runs = []
    for style in _styles(spec):
        for variant, settings in spec["variants"].items():
            overrides = {**common, **(settings or {})}
            model = resolve_run(
                recipe, overrides, style, served=served
            ).model.model_name_or_path  # the base model names the run
            if sft is not None:
                overrides["model_name_or_path"] = str(output / sft.name)
            resolved = resolve_run(recipe, overrides, style, served=served)
            # A variant named like a method must train it (RunFolder checks); other names are free
            folder = RunFolder(
                model,
                resolved.script.dataset_name,
                Method.from_config(resolved.training),
                variant=str(variant),
                style=style,
            )
            after = sft.index if sft else None
            runs.append(SweepRun(len(runs), folder.name, recipe, overrides, resolved, style, after=after))
    return ([sft] if sft else []), runs


def load_sweep(
    spec: str | os.PathLike, root: Path | None = None, output_dir: str | os.PathLike | None = None
) -> Sweep:
    """A sweep by name (recipes/sweeps/<name>.yaml) or path, with every run expanded and every key checked."""
    root = root or repo_root()
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        path = root / "recipes" / "sweeps" / f"{spec}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "recipes" / "sweeps").glob("*.yaml"))
        _fail(f"no sweep {spec!r}; available: {', '.join(available)} (or a path to a sweep YAML).")
    data = yaml.safe_load(path.read_text()) or {}
    _check_keys(data, SWEEP_KEYS, str(path))
    evaluation = dict(data.get("evaluation") or {})
    check_fields(evaluation, f"{path}: evaluation")
    EvalConfig(model="<each run>", output_dir="<run>/eval", **evaluation)  # checked now, not when a task runs
    slurm = {**SLURM_DEFAULTS, **(data.get("slurm") or {})}
    _check_keys(slurm, set(SLURM_DEFAULTS), f"{path}: slurm")
    runs_spec = data.get("runs") or {}
    output = Path(output_dir or data.get("output_dir") or Path("data") / "sweeps" / path.stem).resolve()
    expand = _paper_runs if runs_spec.get("paper_grid") else _variant_runs
    sft_runs, runs = expand(runs_spec, root, output, served=slurm["nodes"] > 1)
    hf_home = str(Path(data["hf_home"]).expanduser().resolve()) if data.get("hf_home") else None
    return Sweep(path.stem, path.resolve(), output, runs, evaluation, slurm, hf_home, sft_runs)


def attempts(run_dir: Path) -> list[dict]:
    """The events of attempts.jsonl: start, preempted, failed (with the stage's last error line), trained, evaluated."""
    return read_jsonl(run_dir / "attempts.jsonl", lambda record: "event" in record, "an attempt record")


def run_state(run_dir: Path, stage: str = "grpo") -> str:
    """done (evaluated; an SFT run: trained), failed (its last attempt failed), trained, started, or pending."""
    from grpo_lambda.evaluation.store import read_results

    if stage == "sft" and final_step(str(run_dir)) is not None:
        return "done"
    if (run_dir / "eval" / "results.json").is_file():
        read_results(run_dir / "eval" / "results.json")  # a damaged one: one line naming it
        return "done"
    events = attempts(run_dir)
    if events and events[-1]["event"] == "failed":
        return "failed"
    if final_step(str(run_dir)) is not None:  # the final model saved whole (grpo_lambda.reruns)
        return "trained"
    return "started" if events else "pending"


def failures(sweep: Sweep) -> list[str]:
    """One line per failed run (SFT runs first): its index, attempts so far, the stage and its last error line, and
    for an SFT run the RL runs that wait for it."""
    lines = []
    for run in [*sweep.sft_runs, *sweep.runs]:
        events = attempts(sweep.run_dir(run))
        if events and events[-1]["event"] == "failed":
            starts = sum(event["event"] == "start" for event in events)
            last = events[-1]
            error = last.get("error") or f"exit status {last.get('exit_code')}"
            what = f"{'SFT run' if run.stage == 'sft' else 'run'} {run.index} ({run.name})"
            waiting = sum(other.after == run.index for other in sweep.runs) if run.stage == "sft" else 0
            lines.append(
                f"{what} failed in {last.get('stage')} after {starts} attempt(s): {error}"
                + (f"; its {waiting} RL runs wait for it" if waiting else "")
            )
    return lines


def _git_commit(root: Path) -> dict:
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _record(run_dir: Path, event: str, **details) -> None:
    entry = {
        "event": event,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array": f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if "SLURM_ARRAY_JOB_ID" in os.environ
        else None,
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        **details,
    }
    append_jsonl(run_dir / "attempts.jsonl", entry, lambda record: "event" in record)


class Runner:
    """Trains one run, then evaluates it, resuming whatever an earlier attempt left; requeues on the warning. Its
    stages run under one processes.Supervisor: SLURM's SIGUSR1 (or a SIGTERM, SIGINT, SIGHUP) asks a training to
    checkpoint and stop, and stops an evaluation (its samples are on disk); then the task requeues itself."""

    def __init__(self, run: SweepRun, run_dir: Path, evaluation: dict, slurm: dict, sweep: Sweep | None = None):
        self.run, self.run_dir, self.evaluation, self.slurm, self.sweep = run, run_dir, evaluation, slurm, sweep
        self.root = repo_root()
        self.python = sys.executable
        self.error: str | None = None  # the training's last error line

    def prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "run.json").is_file():
            info = {
                "name": self.run.name,
                "sweep": str(self.sweep.path) if self.sweep else None,
                "index": self.run.index if self.sweep else None,
                "recipe": str(self.run.recipe),
                "overrides": self.run.overrides,
                "evaluation": self.evaluation,
                **_git_commit(self.root),
            }
            replace_file(self.run_dir / "run.json", json.dumps(info, indent=2) + "\n")

    def _launch(self, overrides: dict) -> list[str]:
        everything = {**self.run.overrides, **overrides, "output_dir": str(self.run_dir)}
        return [
            self.python,
            "-m",
            "grpo_lambda.jobs.launch",
            *(["--stage", "sft"] if self.run.stage == "sft" else []),
            "--recipe",
            str(self.run.recipe),
            "--accelerate",
            self.slurm["accelerate"],
            "--overrides",
            json.dumps(everything),
            *(["--recipe-style", self.run.style] if self.run.style else []),
        ]

    def training_commands(self) -> list[list[str]]:
        """The launch command(s): one process tree on a single node; on several nodes, TRL's vLLM server on the
        last node and `grpo_lambda.jobs.launch` on each of the others (srun, one task per node)."""
        nodes = _job_nodes()
        if len(nodes) <= 1 or self.run.stage == "sft":  # SFT generates nothing: no server
            return [self._launch({})]
        server, trainers = nodes[-1], nodes[:-1]
        command, env, url, _ = self.vllm_server(server.address)
        serve = [
            "srun",
            "--nodes=1",
            "--ntasks=1",
            f"--nodelist={server.name}",
            "--job-name=vllm-server",  # the step's name in `squeue --steps`
            *_step_resources(),
            "--export=" + ",".join(["ALL", *(f"{k}={v}" for k, v in env.items())]),
            *command,
        ]
        train = [
            "srun",
            f"--nodes={len(trainers)}",
            "--ntasks-per-node=1",
            f"--nodelist={','.join(node.name for node in trainers)}",
            "--job-name=trainers",
            *_step_resources(),
            "--export=ALL",
            *self._launch(
                {
                    "use_vllm": True,
                    "vllm_mode": "server",
                    "vllm_server_base_url": url,
                    "vllm_group_port": self.ports()["vllm_group_port"],
                }
            ),
            # several training nodes: accelerate's multi-machine rendezvous on the first one
            *(
                ["--num-machines", str(len(trainers)), "--main-process-ip", trainers[0].address]
                if len(trainers) > 1
                else []
            ),
        ]
        return [serve, train]

    def ports(self) -> dict[str, int]:
        """The server's and the weight sync's ports: the run's own where it sets them, else derived from the SLURM job
        id, so that two tasks on one node never share TRL's fixed 8000 and 51216 (accelerate's rendezvous port is
        20000 + job % 10000: these stay clear of it and of Linux's ephemeral range)."""
        training, values = self.run.settings.training, self.run.settings.values
        job = os.environ.get("SLURM_JOB_ID", "")
        derived = {
            "vllm_server_port": 10000 + int(job) % 10000 if job.isdigit() else training.vllm_server_port,
            "vllm_group_port": 30000 + int(job) % 2700 if job.isdigit() else training.vllm_group_port,
        }
        return {name: values.get(name, port) for name, port in derived.items()}

    def vllm_server(self, host: str) -> tuple[list[str], dict[str, str], str, float]:
        """The serving node's command and environment (grpo_lambda.jobs.launch.vllm_server_command), its URL on
        `host` (the node's address), and how long the trainers wait for it (the run's vllm_server_timeout)."""
        training, model = self.run.settings.training, self.run.settings.model
        port = self.ports()["vllm_server_port"]
        command, env = vllm_server_command(
            model.model_name_or_path,
            "0.0.0.0",
            port,
            model.dtype,
            self.slurm["vllm_tensor_parallel_size"],
            training.vllm_max_model_length,
            training.generation_batch_size,
        )
        return command, env, f"http://{host}:{port}", training.vllm_server_timeout

    def evaluation_command(self) -> list[str]:
        """The run's evaluation: its template is the run's own (the run record the evaluation reads). On a task with
        GPUs it uses every GPU of its node: one engine per tensor_parallel_size of them (data_parallel_size), unless
        the sweep's evaluation section sets data_parallel_size itself."""
        evaluation = dict(self.evaluation)
        gpus = str(self.slurm.get("gpus_per_node") or "").rsplit(":", 1)[-1]  # 4, or a typed request: a100:4
        if gpus.isdigit() and "data_parallel_size" not in evaluation:
            evaluation["data_parallel_size"] = max(1, int(gpus) // int(evaluation.get("tensor_parallel_size", 1)))
        flags = as_flags({"model": str(self.run_dir), "output_dir": str(self.run_dir / "eval"), **evaluation})
        return [self.python, "-m", "grpo_lambda.evaluation.evaluate", *flags]

    def _stage(
        self, supervisor: Supervisor, command: list[str], stop_file: Path | None = None
    ) -> tuple[int, str | None]:
        """A stage's exit status and the one-line error it ended with (errors.record_exit, through
        $GRPO_LAMBDA_EXIT_FILE), if any."""
        with tempfile.TemporaryDirectory(prefix="grpo_lambda-stage-") as scratch:
            exits = Path(scratch) / "exits.jsonl"
            env = {**os.environ, EXIT_FILE_VARIABLE: str(exits)}
            code = supervisor.run(command, self.root, env, stop_file)
            lines = [json.loads(line) for line in exits.read_text().splitlines()] if exits.is_file() else []
        errors = [line["error"] for line in lines if line.get("error")]
        return code, errors[-1] if errors else None

    def train(self, supervisor: Supervisor) -> int:
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)
        commands = self.training_commands()
        if len(commands) > 1:  # trainers start once the server answers (it may download the model first)
            print("[sweep] " + shlex.join(commands[0]), flush=True)
            server = supervisor.start(commands[0], self.root)
            _, _, url, timeout = self.vllm_server(_job_nodes()[-1].address)
            try:
                model = commands[0][commands[0].index("--model") + 1]
                wait_for_vllm_server(url, timeout, server, model=model)
            except Stopped:
                raise
            except GRPOLambdaError as error:
                print(error, file=sys.stderr, flush=True)
                self.error = str(error)
                return 1
        print("[sweep] " + shlex.join(commands[-1]), flush=True)
        code, self.error = self._stage(supervisor, commands[-1], self.run_dir / STOP_FILE)
        return code

    def requeue(self, stage: str) -> int:
        _record(self.run_dir, "preempted", stage=stage)
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            print(f"[sweep] stopped on a signal during {stage}; run again to resume", flush=True)
            return EXIT_PREEMPTED
        print(f"[sweep] stopped on the warning signal during {stage}: requeueing job {job}", flush=True)
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"[sweep] scontrol requeue failed: {result.stderr.strip()}", file=sys.stderr, flush=True)
            return EXIT_PREEMPTED
        return 0

    def __call__(self, stages: tuple[str, ...] = ("train", "evaluate")) -> int:
        if self.run.stage == "sft":
            stages = ("train",)  # an SFT run is evaluated through the RL runs it starts
        state = run_state(self.run_dir, self.run.stage)
        if state == "done" and ("evaluate" in stages or self.run.stage == "sft"):
            print(f"[sweep] {self.run.name}: already finished", flush=True)
            return 0
        if self.run.after is not None and self.sweep is not None:
            sft = self.sweep.sft_runs[self.run.after]
            if run_state(self.sweep.run_dir(sft), "sft") != "done":
                _fail(
                    f"{self.run.name} starts from the SFT run {self.sweep.run_dir(sft)}, which has not finished: "
                    "run that first (make sweep submits it before the RL runs that wait for it)."
                )
        self.prepare()
        _record(self.run_dir, "start", stages=list(stages))
        guard_process_tree()
        stage = "train"
        try:
            with Supervisor(FORWARDED + (signal.SIGUSR1,)) as supervisor:
                if "train" in stages and state != "trained":
                    code = self.train(supervisor)
                    # accelerate's launcher reports a trainer's EXIT_PREEMPTED as 1
                    if code == EXIT_PREEMPTED or (supervisor.received and code != 0):
                        return self.requeue("train")
                    if code != 0:
                        _record(self.run_dir, "failed", stage="train", exit_code=code, error=self.error)
                        return code
                    _record(self.run_dir, "trained")
                if "evaluate" in stages:
                    stage = "evaluate"
                    if supervisor.received:
                        return self.requeue(stage)
                    print("[sweep] " + shlex.join(self.evaluation_command()), flush=True)
                    code, error = self._stage(supervisor, self.evaluation_command())
                    if supervisor.received:
                        return self.requeue(stage)
                    if code != 0:
                        _record(self.run_dir, "failed", stage=stage, exit_code=code, error=error)
                        return code
                    _record(self.run_dir, "evaluated")
        except Stopped:  # a signal between the stages, or while a server started: nothing running to save
            return self.requeue(stage)
        return 0


def _step_resources() -> list[str]:
    """What each srun task gets of its node: the job's CPUs per task (srun no longer inherits --cpus-per-task from
    sbatch since Slurm 22.05, so a step task would get one CPU) and its GPUs per node."""
    flags = []
    for variable, flag in (("SLURM_CPUS_PER_TASK", "cpus-per-task"), ("SLURM_GPUS_PER_NODE", "gpus-per-node")):
        value = os.environ.get(variable, "").strip()
        if value:
            flags.append(f"--{flag}={value}")
    return flags


@dataclass(frozen=True)
class JobNode:
    name: str  # SLURM's node name, as srun --nodelist takes it
    address: str  # where the other nodes reach it: SLURM's NodeAddr (on most clusters the name itself)


def _job_nodes() -> list[JobNode]:
    """The nodes of a multi-node job, in SLURM's order; [] for a single-node job or outside SLURM. Addresses come
    from `scontrol show node`: a node's name need not resolve (several slurmd on one host, a cluster whose
    interconnect addresses differ from its node names), its NodeAddr is what slurmctld itself connects to."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist or int(os.environ.get("SLURM_JOB_NUM_NODES", "1")) <= 1:
        return []
    names = _scontrol("show", "hostnames", nodelist).split()
    addresses = {}
    for line in _scontrol("--oneliner", "show", "node", nodelist).splitlines():
        fields = dict(re.findall(r"(?:^|\s)(NodeName|NodeAddr)=(\S+)", line))
        if "NodeName" in fields:
            addresses[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    missing = [name for name in names if name not in addresses]
    if missing:
        _fail(f"scontrol show node {nodelist} does not list node(s) {', '.join(missing)}: check `scontrol show node`.")
    return [JobNode(name, addresses[name]) for name in names]


def _scontrol(*args: str) -> str:
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if result.returncode != 0:
        _fail(f"scontrol {' '.join(args)} failed: {_one_line(result.stderr)}")
    return result.stdout


def cluster_flags(slurm: dict) -> list[str]:
    """The sbatch flags of the cluster's policy (account, partition, qos, constraint, time, sbatch_args), which every
    job of a sweep gets: the array job and the aggregation after it."""
    flags = [f"--{key}={slurm[key]}" for key in CLUSTER_KEYS if slurm[key] is not None]
    return [*flags, *slurm["sbatch_args"]]


def sbatch_command(
    sweep: Sweep, indices: list[int], root: Path, stage: str = "grpo", after: str | None = None
) -> list[str]:
    """The array job of `indices` (of the sweep's SFT runs for stage `sft`), after the SLURM job `after`
    (`<job>_<task>`: an SFT task) has succeeded; cancelled if it fails (--kill-on-invalid-dep)."""
    slurm = sweep.slurm
    array = _compact(indices) + (f"%{slurm['throttle']}" if slurm["throttle"] else "")
    name = slurm["job_name"] or "grpo-lambda-" + sweep.name
    command = [
        "sbatch",
        "--parsable",
        f"--job-name={name}{'-sft' if stage == 'sft' else ''}",
        f"--array={array}",
        f"--output={sweep.output_dir / 'logs' / '%A_%a.out'}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{slurm['signal_seconds']}",
        f"--nodes={slurm['nodes']}",
        f"--comment={_comment(sweep, stage)}",
        f"--chdir={root}",
        f"--export=ALL,GRPO_LAMBDA_PYTHON={sys.executable},GRPO_LAMBDA_ROOT={root}"
        + (f",HF_HOME={sweep.hf_home}" if sweep.hf_home else ""),
    ]
    for key, flag in (("gpus_per_node", "gpus-per-node"), ("cpus_per_task", "cpus-per-task"), ("mem", "mem")):
        if slurm[key] is not None:
            command.append(f"--{flag}={slurm[key]}")
    if after:
        command += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    command += [*cluster_flags(slurm), str(root / "slurm" / "sweep.slurm"), str(sweep.path), str(sweep.output_dir)]
    return command + (["sft"] if stage == "sft" else [])


def aggregate_sbatch_command(sweep: Sweep, root: Path) -> list[str]:
    """The aggregation job, after the array job (`{job}`: its id) whatever its tasks' outcome."""
    return [
        "sbatch",
        "--parsable",
        "--dependency=afterany:{job}",
        f"--job-name=aggregate-{sweep.name}",
        f"--output={sweep.output_dir / 'logs' / 'aggregate_%j.out'}",
        f"--chdir={root}",
        *cluster_flags(sweep.slurm),
        "--wrap",
        shlex.join(_aggregate_command(sweep)),
    ]


SUBMISSIONS = "submissions.jsonl"  # <sweep output>/: every array job submitted, with its indices


def _is_submission(record: dict) -> bool:
    return isinstance(record.get("array_job"), str) and isinstance(record.get("indices"), list)


def _comment(sweep: Sweep, stage: str) -> str:
    """The comment every array job of this sweep's output folder carries (sbatch --comment): what squeue shows of a
    job submitted by a `make sweep` killed before it recorded the job in submissions.jsonl."""
    return f"grpo_lambda:{stage}:{sweep.output_dir}"


def queued_runs(sweep: Sweep, stage: str = "grpo") -> dict[int, tuple[str, str]]:
    """Index → (SLURM state: PENDING, RUNNING, REQUEUED, ..., its task `<job>_<index>`) of the sweep's runs (its SFT
    runs: `stage` sft) that an array job of this sweep still holds in the queue: one recorded in submissions.jsonl,
    or one carrying the sweep's comment (_comment). The scheduler is asked (squeue), since a queued or running run has
    no result file yet; a job that has left the queue no longer counts."""
    submitted = read_jsonl(sweep.output_dir / SUBMISSIONS, _is_submission, "a submission record")
    jobs = {record["array_job"] for record in submitted if record.get("stage", "grpo") == stage}
    if shutil.which("squeue") is None:
        if not jobs:
            return {}  # no scheduler here (a dry run on a laptop) and nothing submitted from this folder
        _fail(
            f"{sweep.output_dir / SUBMISSIONS} lists array jobs of this sweep, and squeue is not found to ask whether "
            "they still run: submit from the cluster's login node."
        )
    user = os.environ.get("USER") or getpass.getuser()
    listing = subprocess.run(["squeue", "-h", "-r", "-u", user, "-o", "%F %K %T %k"], capture_output=True, text=True)
    if listing.returncode != 0:
        if not jobs:
            return {}  # squeue without a controller (a login node's client alone): nothing of this folder recorded
        _fail(f"squeue failed, so queued runs cannot be told apart: {_one_line(listing.stderr)}")
    states, comment = {}, _comment(sweep, stage)
    for line in listing.stdout.splitlines():
        job, index, state, marked = (line.split(maxsplit=3) + ["", "", "", ""])[:4]
        if (job in jobs or marked.strip() == comment) and index.isdigit():
            states[int(index)] = (state, f"{job}_{index}")
    return states


def _one_line(text: str) -> str:
    """sbatch's / squeue's message on one line (without their `sbatch: error:` prefixes)."""
    lines = [line.strip().removeprefix("sbatch: error: ").strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or "(no message)"


def _compact(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8' (SLURM's --array syntax)."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def list_runs(sweep: Sweep, queued: dict | None = None, queued_sft: dict | None = None) -> str:
    """A table of the runs, SFT runs first (index sft<i>): index, state (from the run folder; a queued or running
    array task: SLURM's state), recipe, output folder."""
    queued, queued_sft = queued or {}, queued_sft or {}

    def row(run: SweepRun, waiting: dict, prefix: str) -> tuple[str, ...]:
        state = waiting[run.index][0].lower() if run.index in waiting else run_state(sweep.run_dir(run), run.stage)
        return f"{prefix}{run.index}", state, _display(run.recipe), _display(sweep.run_dir(run))

    rows = [row(run, queued_sft, "sft") for run in sweep.sft_runs] + [row(run, queued, "") for run in sweep.runs]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("index", "state", "recipe", "output"))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("index", "state", "recipe", "output"), widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resources(sweep: Sweep) -> str:
    """One line on what each array task asks SLURM for and the settings every run gets."""
    slurm = sweep.slurm
    asks = [f"{slurm['nodes']} node(s)"]
    asks += [
        f"{slurm[key]} {label}"
        for key, label in (
            ("gpus_per_node", "GPU(s) per node"),
            ("cpus_per_task", "CPUs"),
            ("mem", "memory"),
            ("time", "time limit"),
        )
        if slurm[key] is not None
    ]
    common = {k: v for k, v in sweep.runs[0].overrides.items() if all(r.overrides.get(k) == v for r in sweep.runs)}
    settings = ", ".join(f"{k}={v}" for k, v in common.items()) or "none"
    return f"each task: {', '.join(asks)}; settings on every run: {settings}"


# sbatch's one-letter spellings of the flags a sweep sets on its own jobs, and where a sweep sets each instead
_SHORT_FLAGS = {
    "-a": "--array",
    "-o": "--output",
    "-J": "--job-name",
    "-N": "--nodes",
    "-D": "--chdir",
    "-d": "--dependency",
    "-c": "--cpus-per-task",
}
_SWEEP_KEYS = {
    "--array": "the sweep submits the runs it has not finished; slurm: throttle caps how many run at once",
    "--output": "each task logs to <output_dir>/logs; set output_dir in the sweep file",
    "--job-name": "set slurm: job_name in the sweep file",
    "--nodes": "set slurm: nodes in the sweep file",
    "--signal": "set slurm: signal_seconds in the sweep file",
    "--gpus-per-node": "set slurm: gpus_per_node in the sweep file",
    "--cpus-per-task": "set slurm: cpus_per_task in the sweep file",
    "--mem": "set slurm: mem in the sweep file",
    "--export": "the sweep's jobs need its environment; hf_home in the sweep file sets HF_HOME",
}


def check_sbatch_args(sweep: Sweep, root: Path) -> None:
    """Refuses sbatch_args (the sweep's slurm: sbatch_args, SBATCH_ARGS) that override a flag the sweep sets on its
    own jobs (the array of its runs, the log files it reads, requeueing, the signal, the aggregation's dependency...):
    sbatch takes the last of two, which would be the user's."""
    policy = set(cluster_flags(sweep.slurm))
    own = {
        token.split("=")[0]
        for token in [*sbatch_command(sweep, [0], root), *aggregate_sbatch_command(sweep, root)]
        if token.startswith("--") and token not in policy
    }
    for token in sweep.slurm["sbatch_args"]:
        flag = token.split("=")[0] if token.startswith("--") else _SHORT_FLAGS.get(token[:2], "")
        flag = "--requeue" if flag == "--no-requeue" else flag
        if flag in own:
            fix = _SWEEP_KEYS.get(flag, "the sweep needs its own to requeue, log and aggregate its runs")
            _fail(
                f"sbatch_args {token} (SBATCH_ARGS or slurm: sbatch_args) would override the sweep's own {flag}: "
                f"drop it ({fix})."
            )


def submit(sweep: Sweep, root: Path, dry_run: bool, rerun: bool = False, retry_failed: bool = False) -> int:
    """Submits what is neither finished, queued nor failed (RETRY_FAILED: failed too): the SFT runs as one array, the
    RL runs as one array per SFT run they start from (after its task succeeded; cancelled if it fails), then the
    aggregation after every RL array. DRY_RUN prints that graph and submits nothing."""
    check_sbatch_args(sweep, root)
    queued, queued_sft = queued_runs(sweep), queued_runs(sweep, "sft")
    skipped = ({"done"} if not rerun else set()) | ({"failed"} if not retry_failed else set())
    sft_states = {run.index: run_state(sweep.run_dir(run), "sft") for run in sweep.sft_runs}
    states = {run.index: run_state(sweep.run_dir(run)) for run in sweep.runs}
    sft_todo = [i for i, state in sft_states.items() if i not in queued_sft and state not in skipped | {"done"}]
    todo = [i for i, state in states.items() if i not in queued and state not in skipped]
    finished, failed = (sum(s == k for s in states.values()) for k in ("done", "failed"))
    print(
        f"sweep {sweep.name}: {len(sweep.runs)} runs, {finished} finished, {len(queued)} queued or running, "
        f"{failed} failed, {len(todo)} to run"
        + (f"; SFT runs: {len(sweep.sft_runs)}, {len(sft_todo)} to run" if sweep.sft_runs else "")
    )
    print(resources(sweep))
    print(list_runs(sweep, queued, queued_sft))
    for line in failures(sweep):
        print(line)
    if (failed or "failed" in sft_states.values()) and not retry_failed:
        print("failed runs are not resubmitted: fix the cause above, then RETRY_FAILED=1 (--retry-failed).")
    groups: dict[int | None, list[int]] = {}
    for index in todo:
        after = sweep.runs[index].after
        if after is not None and sft_states[after] == "failed" and after not in sft_todo:
            continue  # waits for an SFT run that failed and is not resubmitted (said above)
        groups.setdefault(after if after is not None and sft_states[after] != "done" else None, []).append(index)
    if not (sft_todo or groups):
        print("nothing to submit; aggregate with: " + shlex.join(_aggregate_command(sweep)))
        return 0
    plan = []  # (what, command, the SFT index it waits for)
    if sft_todo:
        plan.append(("SFT runs", sbatch_command(sweep, sft_todo, root, "sft"), None))
    for after, indices in groups.items():
        waits = None if after is None else queued_sft.get(after, (None, "{sft}_" + str(after)))[1]
        what = "RL runs" if after is None else f"RL runs of {sweep.sft_runs[after].name}"
        plan.append((what, sbatch_command(sweep, indices, root, after=waits), after))
    aggregate = aggregate_sbatch_command(sweep, root)
    for what, command, _ in plan:
        print(f"{what}: " + shlex.join(command).replace("{sft}", "<SFT array job id>"))
    print("then:    " + shlex.join(aggregate).replace("{job}", "<every RL array job id>"))
    if dry_run:
        return 0
    if shutil.which("sbatch") is None:
        _fail("sbatch not found: submit from a SLURM login node (or start slurm/local_cluster.sh to try locally).")
    (sweep.output_dir / "logs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.path, sweep.output_dir / "sweep.yaml")
    sft_job, jobs = None, []
    for what, command, after in plan:
        command = [part.replace("{sft}", sft_job or "") for part in command]
        job = subprocess.run(command, capture_output=True, text=True)
        if job.returncode != 0:
            _fail(f"sbatch refused the {what} array job: {_one_line(job.stderr)}")
        job_id = job.stdout.strip().split(";")[0]
        stage = "sft" if command[-1] == "sft" else "grpo"
        indices = sft_todo if stage == "sft" else groups[after]
        record = {"array_job": job_id, "indices": indices, "stage": stage, "time": _now()}
        append_jsonl(sweep.output_dir / SUBMISSIONS, record, _is_submission)
        print(f"submitted {what}: array job {job_id} ({len(indices)} tasks)")
        sft_job = job_id if stage == "sft" else sft_job
        jobs += [job_id] if stage == "grpo" else []
    if jobs:
        aggregate[aggregate.index("--dependency=afterany:{job}")] = "--dependency=afterany:" + ":".join(jobs)
        aggregated = subprocess.run(aggregate, capture_output=True, text=True)
        if aggregated.returncode != 0:
            _fail(
                f"submitted {', '.join(jobs)}, but sbatch refused the aggregation job: {_one_line(aggregated.stderr)}; "
                f"aggregate by hand when it is done: {shlex.join(_aggregate_command(sweep))}"
            )
        print(f"aggregation job {aggregated.stdout.strip()}")
    print(f"logs: {sweep.output_dir / 'logs'}; when done: make tables RESULTS={sweep.output_dir}")
    return 0


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _aggregate_command(sweep: Sweep) -> list[str]:
    return [
        sys.executable,
        "-m",
        "grpo_lambda.jobs.sweep",
        "aggregate",
        str(sweep.path),
        "--output_dir",
        str(sweep.output_dir),
    ]


def aggregate(sweep: Sweep) -> Path:
    from grpo_lambda.evaluation import tables

    output = sweep.output_dir / "results.md"
    tables.main(["--results", str(sweep.output_dir), "--output_dir", str(sweep.output_dir)])
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("list", "submit", "aggregate", "run"):
        sub = commands.add_parser(name)
        sub.add_argument("sweep", nargs="?" if name == "run" else None, help="recipes/sweeps/ name or a sweep YAML.")
        sub.add_argument("--output_dir", default=None, help="Overrides the sweep's output_dir.")
    submit_ = commands.choices["submit"]
    submit_.add_argument("--dry-run", action="store_true", help="List the runs and the sbatch command only.")
    submit_.add_argument("--rerun", action="store_true", help="Submit finished runs too (they are skipped).")
    submit_.add_argument("--retry-failed", action="store_true", help="Submit runs whose last attempt failed too.")
    submit_.add_argument("--sbatch-args", default="", help='sbatch flags for every job, e.g. "--account=abc".')
    run = commands.choices["run"]  # one run: an array task of a sweep, or a recipe (slurm/train.slurm)
    run.add_argument("--index", type=int, default=None, help="Array index (default: $SLURM_ARRAY_TASK_ID).")
    run.add_argument("--sft", action="store_true", help="An SFT run of the sweep (its index among them).")
    run.add_argument("--recipe", default=None, help="Without a sweep: the recipe to train.")
    run.add_argument("--run-dir", default=None, help="Without a sweep: the run's output folder.")
    run.add_argument("--stages", default="train,evaluate", help="train, evaluate or both (comma-separated).")
    run.add_argument("--evaluation", default="", help="Without a sweep: evaluation flags, e.g. '--benchmarks aime'.")
    run.add_argument("--args", default="", help="Without a sweep: extra trainer flags.")
    args = parser.parse_args(argv)
    root = repo_root()

    if args.command == "run":
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        if not set(stages) <= {"train", "evaluate"} or not stages:
            _fail(f"--stages takes train and/or evaluate, got {args.stages!r}.")
        return _runner(args, root)(stages)

    sweep = load_sweep(args.sweep, root, args.output_dir)
    if args.command == "list":
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs, output {sweep.output_dir}")
        print(list_runs(sweep, queued_runs(sweep), queued_runs(sweep, "sft")))
        return 0
    if args.command == "submit":
        sweep.slurm["sbatch_args"] = [*sweep.slurm["sbatch_args"], *shlex.split(args.sbatch_args)]
        return submit(sweep, root, args.dry_run, args.rerun, args.retry_failed)
    print(f"wrote {aggregate(sweep)}")
    return 0


def _runner(args: argparse.Namespace, root: Path) -> Runner:
    """The Runner of `sweep run`: an array task of a sweep, or one recipe (slurm/train.slurm)."""
    if args.sweep:
        sweep = load_sweep(args.sweep, root, args.output_dir)
        index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
        runs = sweep.sft_runs if args.sft else sweep.runs
        if not 0 <= index < len(runs):
            _fail(
                f"index {index} outside the sweep's {len(runs)} {'SFT ' if args.sft else ''}runs (0..{len(runs) - 1})."
            )
        sweep_run = runs[index]
        return Runner(sweep_run, sweep.run_dir(sweep_run), sweep.evaluation, sweep.slurm, sweep)
    if not (args.recipe and args.run_dir):
        _fail("run needs a sweep and an index, or --recipe and --run-dir.")
    from grpo_lambda.configs import flag_values

    recipe = Path(args.recipe).resolve()
    if not recipe.is_file():
        _fail(f"no recipe file {args.recipe}.")
    overrides = flag_values("grpo", shlex.split(args.args))
    run_dir = Path(args.run_dir).resolve()
    evaluation = given_fields(shlex.split(args.evaluation))
    check_fields(evaluation, "--evaluation")
    EvalConfig(model=str(run_dir), output_dir=str(run_dir / "eval"), **evaluation)
    slurm = {
        **SLURM_DEFAULTS,
        "accelerate": os.environ.get("GRPO_LAMBDA_ACCELERATE", "auto"),
        "vllm_tensor_parallel_size": int(os.environ.get("GRPO_LAMBDA_VLLM_TP", "1")),
    }
    run = SweepRun(0, run_dir.name, recipe, overrides, resolve_run(recipe, overrides, served=len(_job_nodes()) > 1))
    return Runner(run, run_dir, evaluation, slurm)


if __name__ == "__main__":
    sys.exit(exit_status(main))
