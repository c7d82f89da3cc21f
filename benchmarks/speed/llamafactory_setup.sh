#!/usr/bin/env bash
# LLaMA-Factory for bench_sft.py, in an ISOLATED venv (it pins its own transformers/peft/trl; never install it into
# the system python). What it took on the benchmark machine (CPU, torch 2.13 CPU wheel on disk, PyPI only):
#   1. CPU torch first, and llamafactory with torch pinned to it, so pip cannot pull a CUDA torch of another version
#      (the comparison must run on the same torch as peftkit). ~4 minutes.
#   2. PyPI's torchvision (0.28) does not load against torch 2.13 CPU ("operator torchvision::nms does not exist"),
#      and transformers then fails to import: remove it (text-only training does not need it).
#   3. LLaMA-Factory 0.9.5 imports torchaudio unconditionally (data/mm_plugin.py), and PyPI's newest torchaudio (2.11)
#      cannot load its library against torch 2.13: replace it with an empty module (only audio inputs would use it).
# Usage: benchmarks/llamafactory_setup.sh [VENV]   (default /tmp/lf-venv; bench_sft.py reads PEFTKIT_LF_VENV)
set -euo pipefail
VENV="${1:-/tmp/lf-venv}"
TORCH_WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1)}"
python -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
if [[ -n "$TORCH_WHEEL" ]]; then "$VENV/bin/pip" install -q "$TORCH_WHEEL"; else "$VENV/bin/pip" install -q torch==2.13.0; fi
echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')" > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" "llamafactory==0.9.5"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$SITE/torchaudio"
echo '"""Empty stand-in: LLaMA-Factory 0.9.5 imports torchaudio unconditionally; PyPI has no build for this torch."""' \
  > "$SITE/torchaudio/__init__.py"
"$VENV/bin/llamafactory-cli" version
"$VENV/bin/pip" freeze | grep -i -E '^(torch|transformers|peft|trl|accelerate|llamafactory)=='
