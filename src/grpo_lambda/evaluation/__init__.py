"""Evaluation: the benchmark suite, generation backends (vLLM, transformers), the resumable samples store, the two
grades (`grades`: `paper_grade`, `corrected_grade`), regrading, the report and the paper's tables (`tables`), and the
plots of training curves and generation lengths (`plots`). Imports the core (and the CPU test bench, for `embedded:`
models only)."""
