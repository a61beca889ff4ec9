"""`python -m grpo_lambda.sft` with the CPU test bench on (grpo_lambda.testbench): what the launcher runs on a
machine without GPUs or for an `embedded:` model. Same arguments."""

import sys

from grpo_lambda import sft, testbench
from grpo_lambda.configs import parse_sft_args
from grpo_lambda.errors import GRPOLambdaError


def main(argv: list[str] | None = None) -> int:
    script_args, training_args, model_args = parse_sft_args(argv)
    testbench.enable(training_args)
    return sft.main(script_args, training_args, model_args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GRPOLambdaError as error:
        sys.exit(f"grpo_lambda: {error}")
