#!/usr/bin/env bash
# One GPU with fp8 DiT weights (about 10 GB less memory than bf16, same speed): the equivalent of the official
# scripts/run_sample_video_fp8.sh. The weights are the official fp8 pair (mp_rank_00_model_states_fp8.pt and its
# _fp8_map.pt beside it); a bf16 checkpoint given as DIT_WEIGHT is quantized while loading instead.
#
#   scripts/run_sample_video_fp8.sh [extra sample_video.py flags]
#
# Environment: MODEL_BASE (default ckpts), DIT_WEIGHT (default: the fp8 file under MODEL_BASE), SAVE_PATH
# (./results), PROMPT, PYTHON (python3). Extra flags come last and win.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MODEL_BASE="${MODEL_BASE:-ckpts}"
DIT_WEIGHT="${DIT_WEIGHT:-$MODEL_BASE/hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states_fp8.pt}"

exec "$PYTHON" "$ROOT/sample_video.py" \
    --model-base "$MODEL_BASE" \
    --dit-weight "$DIT_WEIGHT" \
    --video-size 720 1280 \
    --video-length 129 \
    --infer-steps 50 \
    --prompt "${PROMPT:-A cat walks on the grass, realistic style.}" \
    --seed 42 \
    --embedded-cfg-scale 6.0 \
    --flow-shift 7.0 \
    --flow-reverse \
    --use-cpu-offload \
    --use-fp8 \
    --save-path "${SAVE_PATH:-./results}" \
    "$@"
