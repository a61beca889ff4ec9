#!/usr/bin/env bash
# On a lent GPU machine, in one device call of 9 minutes: the trace forms' tests on CUDA, then the benchmarks' tables:
# the loss op, a whole step of stock TRL vs each GRPO-λ variant at a recipe's real shape (Table 2: batch 16, 8 per
# prompt, 256 completion tokens) with transformers `generate` and, where the machine's python imports vllm, vLLM
# colocated; then the real step: a random model with Qwen2.5-Math-1.5B's architecture at Table 2's per-device batch
# and 1 024 / 3 000-token completions (step time and peak memory).
#
# Each part runs under its own time limit (LIMITS below: they add up to 540 s, printed first). Each table is printed
# as soon as it is measured, and everything measured also goes to <output>/gpu_check.json, rewritten after each part
# (each part's output, and the step benchmarks' rows with every round), so a part cut short keeps what came before.
#
# The machine has no network and its own python3 with CUDA torch and transformers; it lacks TRL, datasets and
# math-verify, which the tests and the step benchmark need. Fetch their wheels here once (network), into the
# ignored .whl/, for CPython 3.11–3.14 (whichever the machine has):
#
#   scripts/gpu_check.sh --fetch-wheels
#
# then, on the device (carrying .whl):   bash scripts/gpu_check.sh [output folder, default $OUT or data/gpu_check]
# Without .whl/ the loss-op benchmark still runs and the step benchmarks say why they were skipped. vLLM (hundreds
# of MB) cannot be carried: the vLLM rows appear only where the machine's python has vllm.
#
#   bash scripts/gpu_check.sh --miniature [output]   # the same parts at toy sizes on a CPU (tests/test_bench_scripts.py)
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2)
PYTHONS=(3.11 3.12 3.13 3.14)  # TRL 1.16 needs >= 3.11; multiprocess has one wheel per CPython version
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    exclude="$(git rev-parse --git-common-dir)/info/exclude"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    for version in "${PYTHONS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "${WHEELS[@]}" && echo "wheels for CPython $version: ok" \
            || echo "wheels for CPython $version: not all available (see above)"
    done
    exit 0
fi

MODE=gpu
if [[ "${1:-}" == "--miniature" ]]; then
    MODE=miniature
    shift
fi
OUTPUT=${1:-${OUT:-data/gpu_check}}
PARTS=(environment install trace_tests bench_traces bench_step real_step)
LIMITS=(20 30 60 100 130 200)  # seconds, in the order of PARTS: 540 in all, one 9-minute device call
declare -A LIMIT
budget=0
for i in "${!PARTS[@]}"; do
    LIMIT[${PARTS[$i]}]=${LIMITS[$i]}
    budget=$((budget + LIMITS[i]))
done
mkdir -p "$OUTPUT"
(cd "$OUTPUT" && rm -f parts.tsv gpu_check.json bench_step.rows.json real_step.rows.json "${PARTS[@]/%/.log}")
echo "gpu_check ($MODE): time limits $(for p in "${PARTS[@]}"; do printf '%s=%ss ' "$p" "${LIMIT[$p]}"; done)(budget: $budget s); output in $OUTPUT"

PY=${GPU_CHECK_PYTHON:-python3}
if [[ -z ${GPU_CHECK_PYTHON:-} && -x .venv/bin/python ]] \
    && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    PY=.venv/bin/python
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# gpu_check.json from what the parts left: their lines (parts.tsv, <part>.log) and the step benchmarks' own JSON
report() {
    "$PY" - "$OUTPUT" "$MODE" "$budget" <<'EOF'
import json, os, sys
from pathlib import Path

output, mode, budget = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
report = {"mode": mode, "budget_s": budget, "parts": []}
for line in (output / "parts.tsv").read_text().splitlines():
    name, limit, status, exit_code, seconds = line.split("\t")
    log = output / f"{name}.log"
    report["parts"].append({
        "part": name, "limit_s": int(limit), "status": status, "exit_code": int(exit_code),
        "seconds": float(seconds), "output": log.read_text(errors="replace").splitlines() if log.is_file() else [],
    })
for name in ("bench_step", "real_step"):
    rows = output / f"{name}.rows.json"
    if rows.is_file():
        report[name] = json.loads(rows.read_text())
partial = output / "gpu_check.json.partial"
partial.write_text(json.dumps(report, indent=1) + "\n")
os.replace(partial, output / "gpu_check.json")
EOF
}

# part NAME COMMAND...: COMMAND under NAME's time limit, its output shown and kept; `part NAME -- why` records a skip
part() {
    local name=$1 limit=${LIMIT[$1]} status exit_code start milliseconds
    shift
    echo "== $name (at most $limit s) =="
    start=$(date +%s%N)
    if [[ "$1" == "--" ]]; then
        echo "skipped: ${*:2}" | tee "$OUTPUT/$name.log"
        status=skipped exit_code=0
    else
        timeout "$limit" "$@" 2>&1 | tee "$OUTPUT/$name.log"
        exit_code=${PIPESTATUS[0]}
        case $exit_code in
            0) status=ok ;;
            124 | 137) status="timed out" ;;
            *) status=failed ;;
        esac
        [[ $status == ok ]] || echo "$name: $status (exit status $exit_code)"
    fi
    milliseconds=$((($(date +%s%N) - start) / 1000000))
    printf '%s\t%s\t%s\t%s\t%d.%03d\n' "$name" "$limit" "$status" "$exit_code" $((milliseconds / 1000)) \
        $((milliseconds % 1000)) >>"$OUTPUT/parts.tsv"
    report
}

part environment bash -c "nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'; $PY -c \"import sys, torch; \
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())\""

if compgen -G ".whl/*.whl" >/dev/null; then
    part install "$PY" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${WHEELS[@]}"
    if [[ -d /tmp/site/trl ]]; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
else
    part install -- "no .whl/ (run scripts/gpu_check.sh --fetch-wheels where there is network)"
fi

part trace_tests "$PY" -m pytest -q -p no:cacheprovider tests/test_traces.py -k cuda

if [[ $MODE == miniature ]]; then
    TRACES=(--lengths 64 128 --repeats 1 --device cpu)
    STEP=(--model tiny --rounds 1 --batch 4 --num_generations 2 --max_completion_length 8 --variants eps_trace/both)
    REAL=(--config hidden_size=64 intermediate_size=128 num_hidden_layers=1 num_attention_heads=1 num_key_value_heads=1
        vocab_size=2048 --batch 4 --num_generations 2 --max_completion_length 6 12 --variants eps_weight/both --rounds 1)
else
    TRACES=(--repeats 41)
    STEP=(--model tiny --rounds 10 --batch 16 --num_generations 8 --max_completion_length 256 --vllm_max_model_length 512)
    REAL=(--batch 16 --num_generations 8 --dtype bfloat16 --max_completion_length 1024 3000 --rounds 2)
fi
part bench_traces "$PY" scripts/bench_traces.py "${TRACES[@]}"

if "$PY" -c "import trl, datasets, math_verify" 2>/dev/null; then
    BACKENDS=(generate)
    if "$PY" -c "import vllm" 2>/dev/null; then
        BACKENDS+=(vllm)  # colocated: the rows with vLLM generating in the trainer's process
    else
        echo "vLLM is not importable here: only the generate rows"
    fi
    part bench_step "$PY" scripts/bench_step.py "${STEP[@]}" --generation "${BACKENDS[@]}" \
        --json "$OUTPUT/bench_step.rows.json"
    part real_step "$PY" scripts/bench_step.py --model random:Qwen2.5-Math-1.5B "${REAL[@]}" --gradient_checkpointing \
        --suppress_eos --generation generate --skip_generation --json "$OUTPUT/real_step.rows.json"
else
    why="trl, datasets or math_verify is not importable here (run scripts/gpu_check.sh --fetch-wheels first)"
    part bench_step -- "$why"
    part real_step -- "$why"
fi
echo "gpu_check: everything above is in $OUTPUT/gpu_check.json"
