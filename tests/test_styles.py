"""Recipe styles (recipes/styles/*.yaml): overlays whose keys replace a recipe's. Every style over every paper GRPO
recipe parses with the trainer's parser and keeps the style's values; every value names its source."""

import pytest
import yaml

from conftest import REPO_ROOT
from grpo_lambda.configs import parse_grpo_args
from grpo_lambda.jobs.recipes import expand_grid, load_grid

STYLES = sorted((REPO_ROOT / "recipes" / "styles").rglob("*.yaml"))
RUNS = expand_grid(load_grid(REPO_ROOT))


def test_the_dapo_style_is_there():
    assert REPO_ROOT / "recipes" / "styles" / "dapo.yaml" in STYLES


@pytest.mark.parametrize("style", STYLES, ids=lambda p: p.stem)
def test_every_style_value_names_its_source(style):
    for line in style.read_text().splitlines():
        if line and not line.startswith("#"):
            assert " # " in line, f"{style.name}: {line!r} has no source"


@pytest.mark.parametrize("style", STYLES, ids=lambda p: p.stem)
def test_every_paper_recipe_with_every_style_parses(style, tmp_path):
    overlay = yaml.safe_load(style.read_text())
    for run in RUNS:
        recipe = yaml.safe_load((REPO_ROOT / run.path).read_text())
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump({**recipe, **overlay}))
        _, args, _ = parse_grpo_args(["--config", str(path), "--use_cpu", "true"])
        assert {key: getattr(args, key) for key in overlay} == overlay, run.path


def test_make_train_recipe_style_prints_the_overlaid_settings_in_its_own_folder():
    """`make train RECIPE_STYLE=dapo DRY_RUN=1`: the style's values over the recipe, in a run folder of its own
    (style-dapo/...), so a paper run and a DAPO-style run of one method never share a folder."""
    import subprocess
    import sys
    from pathlib import Path

    from grpo_lambda.methods import Method, RunFolder

    variables = ["MODEL=Qwen/Qwen2.5-Math-1.5B-Instruct", "DATASET=gsm8k", "LOSS_VARIANT=grpo", "ACCEL=cpu"]
    result = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            "install",
            f"VENV={Path(sys.executable).parents[1]}",
            "train",
            "DRY_RUN=1",
            "RECIPE_STYLE=dapo",
            "ARGS=--use_vllm false",
            *variables,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    settings = yaml.safe_load(result.stdout.split("written when the run starts):\n", 1)[1])
    overlay = yaml.safe_load((REPO_ROOT / "recipes/styles/dapo.yaml").read_text())
    assert {key: settings[key] for key in overlay} == overlay and settings["use_vllm"] is False
    folder = RunFolder.find(settings["output_dir"])
    assert folder == RunFolder("Qwen2.5-Math-1.5B-Instruct", "gsm8k", Method("grpo"), style="dapo")
    assert "/style-dapo/Qwen2.5-Math-1.5B-Instruct/grpo/gsm8k_grpo" in settings["output_dir"]


def test_a_sweep_crosses_the_grid_with_styles(tmp_path):
    from grpo_lambda.jobs.sweep import load_sweep

    spec = {"runs": {"paper_grid": True, "sizes": ["7B"], "datasets": ["gsm8k"], "styles": ["paper", "dapo"]}}
    path = tmp_path / "crossed.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = load_sweep(path, REPO_ROOT, tmp_path / "out").runs
    assert [run.style for run in runs] == [None, None, "dapo", "dapo"]
    assert [run.name.startswith("style-dapo/") for run in runs] == [False, False, True, True]
    assert all(run.settings.training.loss_type == "dapo" and run.settings.training.beta == 0 for run in runs[2:])
    assert all(run.settings.training.loss_type != "dapo" for run in runs[:2])
