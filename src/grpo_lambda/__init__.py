"""GRPO-λ: eligibility traces for critic-free RL post-training of LLMs, as TRL recipes (see README.md).

This package's top level is the core: the method and its training — trace weights (`traces`), the per-token loss
pieces (`loss`), the thin TRL trainer subclass (`trainer`), configs and method names (`configs`, `methods`),
training sets and tasks (`data`), prompts (`templates`), reading answers and gold answers (`answers`), rewards and
their time-bounded math-verify check (`rewards`, `grading`), models' load/save/merge (`models`), the on-disk layout
(`layout`), the metrics log (`metrics_log`), callbacks, and the `grpo` / `sft` entry points. It imports nothing from
the layers built on it: `evaluation`, `jobs`, `testbench` (the CPU test bench) and the repository's `experiments/`.
The contract is checked by import-linter (`make lint`, `.importlinter`).
"""
