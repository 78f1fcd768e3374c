#!/usr/bin/env bash
# The GPU measurements issues 10 and 11 wait for, in two device calls of under ten minutes each.
#
#   bash bench/gpu_issues_10_11.sh first    # jit profile (empty, primed) and the cold start: ~7 min
#   bash bench/gpu_issues_10_11.sh memory   # the four memory plans of the targets: ~7.5 min
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
memory)
    timeout 560 python bench/gpu_memory_plan.py --folder "$FOLDER" --time-budget 480 \
        --only bf16:unlimited,bf16:24GB,fp8:12GB,int4:8GB --out /dev/shm/mem
    mkdir -p "$OUT/mem" && cp /dev/shm/mem/*.json /dev/shm/mem/*.md "$OUT/mem/" 2>/dev/null
    ;;
*)
    echo "usage: bash bench/gpu_issues_10_11.sh first|memory" >&2
    exit 2
    ;;
esac
