"""Jobs: turning a user's request into runs. Recipe lookup and the `accelerate launch` command (`launch`, behind
`make train` / `make sft`), the recipes generated from the paper's grid (`recipes`), and SLURM sweeps with
per-run evaluation and requeue on preemption (`sweep`). May import the core, the evaluation and the CPU test
bench; nothing below imports it."""
