"""How a runner asks a training run to stop early, and how the run says it did (no imports: the SLURM runner reads it).

The runner (grpo_lambda.jobs.sweep, on SLURM's warning signal before the time limit) creates `STOP_FILE` in the run's
output folder; every rank of the run sees it, saves a checkpoint at the end of its current step and exits with
`EXIT_PREEMPTED` (grpo_lambda.callbacks.PreemptionCallback); the runner requeues the run, which resumes.
"""

STOP_FILE = "STOP_REQUESTED"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL, "try again later"
