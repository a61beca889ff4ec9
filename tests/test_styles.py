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
