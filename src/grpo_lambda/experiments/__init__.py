"""Experiments built on the library, apart from it: the `credit_echo` toy task and its benchmark
(`make reproduce-toy`, `python -m grpo_lambda.experiments.toy_benchmark`) and the CPU demo (`make demo`).

The library (grpo_lambda.*) never imports this package, except data.py's entry for the `credit_echo` source, and
only when that source is asked for.
"""
