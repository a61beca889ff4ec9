"""GRPO-λ: eligibility traces for critic-free RL post-training of LLMs, as TRL recipes (see README.md)."""
