#!/usr/bin/env bash
# The prepared GPU check, for a machine with an NVIDIA GPU: at most 10 minutes, one summary line per check.
#   bash benchmarks/gpu_check.sh            # from the repository root
# Uses the machine's torch when it is a CUDA build; otherwise installs the CUDA build of torch
# (TORCH_INDEX_URL, default the cu128 wheels; a machine without network needs the wheels beside it,
# e.g. `pip download` them elsewhere and set PIP_FIND_LINKS). Then installs this package without
# touching torch and runs benchmarks/gpu_check.py (QLoRA with bitsandbytes' CUDA kernels, bf16 stage I
# + II, the CUDA peak against --dry-run's estimate, two-GPU DDP when there are two GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    pip install --upgrade torch --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}"
fi
pip install -q -e ".[qlora]" --upgrade-strategy only-if-needed
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 600 python benchmarks/gpu_check.py "$@"
