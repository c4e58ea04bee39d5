#!/usr/bin/env bash
# GPU session runbook (issue 10; bench/README.md "GPU session runbook"):
#   bash bench/gpu_session.sh PART [--quick] [--out DIR] [--budget S] [--no-pack]
# PART 1-4 each fit one 10-minute device call; results under $OUT (./gpu-out when unset):
# part<N>-summary.json, part<N>.tar.gz, env.json. --quick is the CPU dry run.
# The logic is in bench/gpu_session.py; $PYTHON picks the interpreter (default python3, the
# one that holds PyTorch on the device image).
set -u
cd "$(dirname "$0")/.." || exit 2
if [ $# -lt 1 ]; then
    echo "usage: bash bench/gpu_session.sh PART [--quick] [--out DIR] [--budget S] [--no-pack]" >&2
    exit 2
fi
exec "${PYTHON:-python3}" bench/gpu_session.py "$@"
