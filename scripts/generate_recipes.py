"""Write every per-model recipe from recipes/paper_grid.yaml (and remove generated files no longer in the grid).

python scripts/generate_recipes.py           # write
python scripts/generate_recipes.py --check   # exit 1 if the committed recipes differ from the grid
"""

import argparse
import sys
from pathlib import Path

from grpo_lambda.jobs.recipes import GENERATED, generate

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Compare instead of writing.")
    args = parser.parse_args()
    files = generate(ROOT)
    stale = [p for p in (ROOT / "recipes").rglob("config_*.yaml") if GENERATED in p.read_text()]
    stale = [p for p in stale if p.relative_to(ROOT) not in files]
    different = [p for p, text in files.items() if not (ROOT / p).is_file() or (ROOT / p).read_text() != text]
    if args.check:
        for path in different + [p.relative_to(ROOT) for p in stale]:
            print(f"out of date: {path}")
        return 1 if different or stale else 0
    for path in stale:
        path.unlink()
    for path, text in files.items():
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(text)
    print(f"wrote {len(files)} recipes ({len(different)} changed, {len(stale)} removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
