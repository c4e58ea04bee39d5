#!/usr/bin/env bash
# GPU session runbook (bench/README.md "GPU session runbook"):
#   bash bench/gpu_session.sh PART|next [--quick] [--out DIR] [--budget S] [--steps A,B]
#                                       [--state FILE] [--work DIR] [--no-pack]
# PART 1-4: part 1 (decisive questions first) fits 8 minutes of a 10-minute device call;
# `next` runs the steps earlier windows have not finished (--state). Results under $OUT
# (./gpu-out when unset), rewritten after every step: part<N>-summary.json, part<N>.tar.gz,
# env.json, gpu-session-state.json. --quick is the CPU dry run.
# The logic is in bench/gpu_session.py; $PYTHON picks the interpreter (default python3, the
# one that holds PyTorch on the device image).
set -u
cd "$(dirname "$0")/.." || exit 2
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_session.sh PART|next [--quick] [--out DIR] [--budget S]" \
         "[--steps A,B] [--state FILE] [--work DIR] [--no-pack]" >&2
    exit 2
fi
exec "${PYTHON:-python3}" bench/gpu_session.py "$@"
