"""The package's layers (README: Layout): the import contract that `make lint` checks, and where the process may end."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{root / 'src'}:{root}"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_the_contract_holds_and_catches_core_importing_evaluation(tmp_path):
    """The checked-in tree keeps the contract; the same tree with one core module importing the evaluation breaks it,
    naming the import."""
    for part in ("src", "experiments", ".importlinter"):
        copy = shutil.copytree if (REPO_ROOT / part).is_dir() else shutil.copy
        copy(REPO_ROOT / part, tmp_path / part)
    kept = lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    traces = tmp_path / "src/grpo_lambda/traces.py"
    traces.write_text(traces.read_text() + "\nfrom grpo_lambda.evaluation import suite  # noqa\n")
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "grpo_lambda.traces is not allowed to import grpo_lambda.evaluation" in broken.stdout, broken.stdout


def _main_block_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def test_only_entry_points_end_the_process():
    """Library code raises GRPOLambdaError; `SystemExit` / `sys.exit` appear only in `if __name__ == "__main__"`."""
    offenders = []
    for path in sorted((REPO_ROOT / "src").rglob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = _main_block_lines(tree)
        for node in ast.walk(tree):
            name = ast.unparse(node) if isinstance(node, (ast.Name, ast.Attribute)) else ""
            if name in ("SystemExit", "sys.exit") and node.lineno not in allowed:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders
