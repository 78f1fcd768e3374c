#!/usr/bin/env bash
# The GPU measurements issues 10 and 11 wait for, in two device calls of under ten minutes each.
#
#   bash bench/gpu_issues_10_11.sh first    # jit profile (empty, primed) and the cold start: ~7 min
#   bash bench/gpu_issues_10_11.sh cold     # the cold start alone (restart, warm runs, a new size): ~4 min
#   bash bench/gpu_issues_10_11.sh memory   # the four memory plans of the targets: ~7.5 min
#   bash bench/gpu_issues_10_11.sh trace    # where the quantized plans' memory goes, MLX and pool: ~6 min
#   bash bench/gpu_issues_10_11.sh both     # memory, then cold, in one call of under ten minutes
#
# On the device machine, after MLX's CUDA build is installed and PYTHONPATH points at it and at src
# (../shared/gpu/README.md). Builds the full-size random-weight folder in /dev/shm when it is missing.
# Figures go under $OUT; the JSON files are what bench/RESULTS.md's sections are written from.
set -u
OUT=${OUT:?set OUT to the folder whose files come back}
FOLDER=${FOLDER:-/dev/shm/zfull}
cd "$(dirname "$0")/.."

case "${1:-}" in
first)
    # Stages without the quantized matmul's compile: the text encoder no longer uses it on CUDA.
    JIT_STAGES="context,load,encode,step:1024,vae:1024:layers,vae:512:whole,generate:1024" \
        timeout 300 python bench/gpu_jit_profile.py --folder "$FOLDER" --only empty,primed --out "$OUT/jit"
    timeout 270 python bench/gpu_cold_start.py --folder "$FOLDER" --skip profile diffusers --out "$OUT/cold"
    ;;
cold)
    timeout 300 python bench/gpu_cold_start.py --folder "$FOLDER" --skip profile diffusers warm-up \
        --out /dev/shm/cold
    mkdir -p "$OUT/cold" && cp /dev/shm/cold/*.json /dev/shm/cold/*.md /dev/shm/cold/engine.log "$OUT/cold/"
    ;;
memory)
    timeout 560 python bench/gpu_memory_plan.py --folder "$FOLDER" --time-budget 480 \
        --only bf16:unlimited,bf16:24GB,fp8:12GB,int4:8GB --out /dev/shm/mem
    mkdir -p "$OUT/mem" && cp /dev/shm/mem/*.json /dev/shm/mem/*.md "$OUT/mem/" 2>/dev/null
    ;;
trace)
    # The int4 and fp8 models in a store of their own, then bench/gpu_memory_trace.py under each budget
    # (int4 also with one load thread: the pool's reserve after a load depends on the threads).
    export OLLAMA_IMG_MODELS=${OLLAMA_IMG_MODELS:-/dev/shm/store}
    [ -f "$FOLDER/model_index.json" ] || python -c "from pathlib import Path; from tests.fixtures.zimage_folder import FULL, build_zimage_folder; build_zimage_folder(Path('$FOLDER'), FULL, transformer_shards=3)"
    for quant in int4 fp8; do
        python -m ollama_img list 2>/dev/null | grep -q "^z:$quant " ||
            python -m ollama_img create "z:$quant" -f "$FOLDER" --quantize "$quant" >/dev/null
    done
    mkdir -p "$OUT/trace"
    run_trace() { # name, model, budget, then env assignments
        local name=$1 model=$2 budget=$3
        shift 3
        env "$@" timeout 200 python bench/gpu_memory_trace.py "$model" --budget "$budget" ${TRACE_ARGS:-} \
            --size "${SIZE:-1024}" --json "$OUT/trace/$name.json" 2>&1 | grep -v "^Generating\|it/s" | tail -20
    }
    run_trace int4_8GB z:int4 8GB
    run_trace int4_8GB_1thread z:int4 8GB OLLAMA_IMG_LOAD_THREADS=1
    run_trace fp8_12GB z:fp8 12GB
    [ -n "${TRIM:-}" ] && TRACE_ARGS=--trim run_trace int4_8GB_trim z:int4 8GB
    ;;
both)
    # The memory plans took 210 s with their creates on an H100 (2026-12-08), the cold start 162 s.
    timeout 330 python bench/gpu_memory_plan.py --folder "$FOLDER" --time-budget 300 \
        --only bf16:unlimited,bf16:24GB,fp8:12GB,int4:8GB --out /dev/shm/mem
    mkdir -p "$OUT/mem" && cp /dev/shm/mem/*.json /dev/shm/mem/*.md "$OUT/mem/" 2>/dev/null
    rm -rf /dev/shm/oi-plan-store # its fp8 and int4 copies: /dev/shm also holds the folder and the cold store
    timeout 240 python bench/gpu_cold_start.py --folder "$FOLDER" --skip profile diffusers warm-up \
        --out /dev/shm/cold
    mkdir -p "$OUT/cold" && cp /dev/shm/cold/*.json /dev/shm/cold/*.md /dev/shm/cold/engine.log "$OUT/cold/"
    ;;
*)
    echo "usage: bash bench/gpu_issues_10_11.sh first|cold|memory|trace|both" >&2
    exit 2
    ;;
esac
