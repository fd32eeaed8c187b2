#!/usr/bin/env bash
# One GPU: a 720x1280, 129-frame video in 50 steps, with idle models offloaded to the CPU.
# The equivalent of the official scripts/run_sample_video.sh (same flags and values).
#
#   scripts/run_sample_video.sh [extra sample_video.py flags]
#
# Environment: MODEL_BASE (default ckpts), SAVE_PATH (./results), PROMPT, PYTHON (python3).
# Extra flags come last and win, e.g. `--video-size 544 960 --infer-steps 30 --seed 7`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

exec "$PYTHON" "$ROOT/sample_video.py" \
    --model-base "${MODEL_BASE:-ckpts}" \
    --video-size 720 1280 \
    --video-length 129 \
    --infer-steps 50 \
    --prompt "${PROMPT:-A cat walks on the grass, realistic style.}" \
    --seed 42 \
    --embedded-cfg-scale 6.0 \
    --flow-shift 7.0 \
    --flow-reverse \
    --use-cpu-offload \
    --save-path "${SAVE_PATH:-./results}" \
    "$@"
