"""Experiments built on the library, apart from it: the `credit_echo` toy task and its benchmark
(`make reproduce-toy`, `python -m experiments.reproduce_toy`) and the CPU demo (`make demo`).

The library (grpo_lambda.*) never imports this package; the toy task joins the library's training sets through
its public registry (grpo_lambda.data.register_task).
"""
