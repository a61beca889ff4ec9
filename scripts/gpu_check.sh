#!/usr/bin/env bash
# On a lent GPU machine, in one call of under 10 minutes: the trace forms' tests on CUDA, then both benchmarks'
# tables: the loss op, and a whole step of stock TRL vs each GRPO-λ variant at a recipe's real shape (Table 2: batch
# 16, 8 per prompt, 256 completion tokens), with transformers `generate` and, where vLLM is installed, vLLM
# colocated; then the real step: a random model with Qwen2.5-Math-1.5B's architecture at Table 2's per-device batch
# and 1 024 / 3 000-token completions (step time and peak memory; tests/test_bench_scripts.py runs it in miniature).
# On an H200 the first three parts took ~2.5 minutes (no vLLM there); the real step is budgeted 5.5 more.
#
# The machine has no network and its own python3 with CUDA torch and transformers; it lacks TRL, datasets and
# math-verify, which the tests and the step benchmark need. Fetch their wheels here once (network), into the
# ignored .whl/:
#
#   scripts/gpu_check.sh --fetch-wheels
#
# then run, on the device (carrying .whl):   bash scripts/gpu_check.sh
# Without .whl/ the loss-op benchmark still runs and the step benchmark says why it was skipped. vLLM (hundreds of
# MB) cannot be carried: the vLLM rows appear only where the machine's python has vllm.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "${WHEELS[@]}"
fi

PY=python3
if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    PY=.venv/bin/python
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== the fast trace forms on CUDA against the dense matrix (tests/test_traces.py -k cuda) =="
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_traces.py -k cuda || echo "CUDA trace tests failed (rc $?)"

echo "== loss op: GRPO vs dense trace vs ours (B = 16, T up to 32768) =="
timeout 170 $PY scripts/bench_traces.py --repeats 41 || echo "bench_traces.py failed or timed out (rc $?)"

echo "== training step: stock TRL vs each GRPO-λ variant, tiny model, a recipe's shape (Table 2) =="
if $PY -c "import trl, datasets, math_verify" 2>/dev/null; then
    BACKENDS=(generate)
    if $PY -c "import vllm" 2>/dev/null; then
        BACKENDS+=(vllm)
    else
        echo "vLLM is not importable here: only the generate rows"
    fi
    timeout 280 $PY scripts/bench_step.py --model tiny --rounds 10 --batch 16 --num_generations 8 \
        --max_completion_length 256 --generation "${BACKENDS[@]}" --vllm_max_model_length 512 \
        || echo "bench_step.py failed or timed out (rc $?)"
else
    echo "skipped: trl, datasets or math_verify is not importable here (run scripts/gpu_check.sh --fetch-wheels first)"
fi

echo "== the real step: Qwen2.5-Math-1.5B's architecture (random weights, built here), Table 2's per-device batch =="
echo "   (16 completions, 8 per prompt), bf16, gradient checkpointing, EOS suppressed: 1 024 and 3 000 tokens"
if $PY -c "import trl, datasets, math_verify" 2>/dev/null; then
    timeout 330 $PY scripts/bench_step.py --model random:Qwen2.5-Math-1.5B --batch 16 --num_generations 8 \
        --dtype bfloat16 --gradient_checkpointing --suppress_eos --max_completion_length 1024 3000 \
        --generation generate --skip_generation --rounds 2 \
        || echo "the real step failed or timed out (rc $?)"
else
    echo "skipped: trl, datasets or math_verify is not importable here"
fi
