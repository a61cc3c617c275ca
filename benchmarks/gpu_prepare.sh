#!/usr/bin/env bash
# Before a GPU session's run (benchmarks/gpu_run.py), here: the data and the wheels the GPU machine lacks go into
# ignored folders of the checkout, which the device tool carries (.carry and .whl, both in .gitignore).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
mkdir -p .carry .whl
cp "$data" .carry/cifar10-jpeg.tar.gz
# The GPU machine has python3 3.12 with torch, onnx and matplotlib, but not pydantic (trainer.linear_eval writes
# its evaluation files with it, trainer.export and service.model read them and the bundle's manifest). Its own
# typing_extensions may be older than pydantic wants.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pydantic==2.12.5 pydantic-core==2.41.5 annotated-types typing-inspection typing-extensions
ls -l .carry .whl
du -sh .carry .whl
