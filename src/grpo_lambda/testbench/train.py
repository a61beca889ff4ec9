"""The training entry points with the CPU test bench on (grpo_lambda.testbench): what the launcher runs on a machine
without GPUs or for an `embedded:` model.

    python -m grpo_lambda.testbench.train grpo|sft --config <recipe> [...]   # the arguments of grpo_lambda.grpo / .sft
"""

import sys

from grpo_lambda import testbench
from grpo_lambda.errors import GRPOLambdaError, exit_status

STAGES = ("grpo", "sft")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in STAGES:
        raise GRPOLambdaError(f"name the stage first: python -m grpo_lambda.testbench.train {'|'.join(STAGES)} ...")
    stage, argv = argv[0], argv[1:]
    if stage == "grpo":
        from grpo_lambda import grpo as entry
        from grpo_lambda.configs import parse_grpo_args as parse
    else:
        from grpo_lambda import sft as entry
        from grpo_lambda.configs import parse_sft_args as parse
    script_args, training_args, model_args = parse(argv)
    testbench.enable(training_args)
    return entry.main(script_args, training_args, model_args)


if __name__ == "__main__":
    sys.exit(exit_status(main, sys.argv[1:]))
