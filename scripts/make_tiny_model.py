"""Write a tiny random Qwen2 model (with a tokenizer trained offline) to a folder, for smoke runs and tests.

python scripts/make_tiny_model.py data/tiny-qwen2
make train MODEL=data/tiny-qwen2 DATASET=arithmetic LOSS_VARIANT=eps_trace ARGS="--max_steps 2"
"""

import argparse

from grpo_lambda.testbench.models import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.output_dir, seed=args.seed))


if __name__ == "__main__":
    main()
