#!/usr/bin/env bash
# The device tool's command for a GPU session (benchmarks/gpu_run.py says what it does):
#     run(command="bash benchmarks/gpu_run.sh", carry=[".carry", ".whl"], timeout_s=600)
# Everything the run prints goes to $OUT/log.txt as it happens, so a run stopped at the limit still returns it.
set -uo pipefail
: "${OUT:?OUT must name the folder the result files go to}"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
# Packages the GPU machine lacks (pydantic for the bundle's manifest) travel as wheels (gpu_prepare.sh).
if ! python3 -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
python3 -m benchmarks.gpu_run --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
