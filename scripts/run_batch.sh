#!/usr/bin/env bash
# Many prompts: every entry of PROMPT_FILE (.txt, one prompt per line, or .jsonl with per-line overrides), the
# models loaded once. Re-running the same command skips finished videos and resumes an interrupted run.
# With NPROC_PER_NODE > 1 the entries are split over that many processes (one GPU each, data parallel).
#
#   scripts/run_batch.sh PROMPT_FILE [extra sample_video.py flags]
#   NPROC_PER_NODE=8 scripts/run_batch.sh prompts.jsonl --video-size 544 960
#
# Environment: NPROC_PER_NODE (1), MODEL_BASE (ckpts), SAVE_PATH (./results/batch), PYTHON (python3).
# Defaults are the official ones (720x1280, 129 frames, 50 steps, seed 42 + entry index); extra flags win.
set -euo pipefail
if [ $# -lt 1 ] || [ "${1:0:2}" = "--" ]; then
    echo "usage: scripts/run_batch.sh PROMPT_FILE [extra sample_video.py flags]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
PROMPT_FILE="$1"
shift
export TOKENIZERS_PARALLELISM=false

launch=("$PYTHON")
if [ "$NPROC_PER_NODE" -gt 1 ]; then
    launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NPROC_PER_NODE")
fi

exec "${launch[@]}" "$ROOT/sample_video.py" \
    --prompt-file "$PROMPT_FILE" \
    --model-base "${MODEL_BASE:-ckpts}" \
    --video-size 720 1280 \
    --video-length 129 \
    --infer-steps 50 \
    --seed 42 \
    --embedded-cfg-scale 6.0 \
    --flow-shift 7.0 \
    --flow-reverse \
    --save-path "${SAVE_PATH:-./results/batch}" \
    "$@"
