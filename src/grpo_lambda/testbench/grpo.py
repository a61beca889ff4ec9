"""`python -m grpo_lambda.grpo` with the CPU test bench on (grpo_lambda.testbench): what the launcher runs on a
machine without GPUs or for an `embedded:` model. Same arguments."""

import sys

from grpo_lambda import grpo, testbench
from grpo_lambda.configs import parse_grpo_args
from grpo_lambda.errors import GRPOLambdaError


def main(argv: list[str] | None = None) -> int:
    script_args, training_args, model_args = parse_grpo_args(argv)
    testbench.enable(training_args)
    return grpo.main(script_args, training_args, model_args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GRPOLambdaError as error:
        sys.exit(f"grpo_lambda: {error}")
