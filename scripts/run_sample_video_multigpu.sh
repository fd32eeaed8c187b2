#!/usr/bin/env bash
# Several GPUs on one machine: one video, its image tokens split over the processes (sequence parallelism).
# The equivalent of the official scripts/run_sample_video_multigpu.sh.
#
#   NPROC_PER_NODE=8 ULYSSES_DEGREE=8 RING_DEGREE=1 scripts/run_sample_video_multigpu.sh [extra flags]
#
# ULYSSES_DEGREE x RING_DEGREE must equal NPROC_PER_NODE. Ulysses splits the 24 attention heads, so its degree must
# divide 24; the ring degree splits the tokens further (e.g. 8 GPUs: 8x1, 4x2, 2x4 or 1x8; 5 GPUs: 1x5). Many
# prompts on many GPUs are faster without sequence parallelism: see scripts/run_batch.sh.
#
# Environment: NPROC_PER_NODE (8), ULYSSES_DEGREE (8), RING_DEGREE (1), MODEL_BASE (ckpts), SAVE_PATH
# (./results), PROMPT, PYTHON (python3). Extra flags come last and win.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
ULYSSES_DEGREE="${ULYSSES_DEGREE:-8}"
RING_DEGREE="${RING_DEGREE:-1}"
export TOKENIZERS_PARALLELISM=false

exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE" "$ROOT/sample_video.py" \
    --model-base "${MODEL_BASE:-ckpts}" \
    --video-size 720 1280 \
    --video-length 129 \
    --infer-steps 50 \
    --prompt "${PROMPT:-A cat walks on the grass, realistic style.}" \
    --seed 42 \
    --embedded-cfg-scale 6.0 \
    --flow-shift 7.0 \
    --flow-reverse \
    --ulysses-degree "$ULYSSES_DEGREE" \
    --ring-degree "$RING_DEGREE" \
    --save-path "${SAVE_PATH:-./results}" \
    "$@"
