#!/usr/bin/env bash
# The GPU check, as one prepared script for a lent GPU machine (the `device` tool): the benchmark,
# the 50-epoch run with the report's settings, then fast-cnn's recipe (issue 12's aim: >= 0.95 in
# <= 30 s on one H200, tried at 18 and 40 epochs), all on CUDA. Results go to $OUT.
#
# That machine has python3 with a CUDA torch, numpy, scikit-learn, matplotlib, rich, pillow,
# safetensors, h5py, onnx(runtime), but no platformdirs or numba and no internet. Prepare here, once:
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/data
#   cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl platformdirs numba llvmlite
# then run (device tool): command "bash benchmarks/gpu_check.sh", carry [".gpu"], timeout_s 540.
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src"
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m fmnist bench --device cuda --json | tee "$OUT/bench-cuda.json"
python3 -m fmnist bench --device cuda --precision bf16 --json | tee "$OUT/bench-cuda-bf16.json"
python3 -m fmnist train --device cuda --data-dir .gpu/data --quiet --out /tmp/run 2>&1 | tee "$OUT/train.log"
python3 -m fmnist evaluate /tmp/run --data-dir .gpu/data 2>&1 | tee "$OUT/evaluate.log"
cp /tmp/run/history.json /tmp/run/metrics.json "$OUT/"
python3 -m fmnist bench --device cuda --model fast-cnn --json | tee "$OUT/bench-cuda-fast.json"
for epochs in 18 40; do
  python3 -m fmnist train --model fast-cnn --epochs $epochs --device cuda --data-dir .gpu/data --quiet \
    --out /tmp/fast$epochs 2>&1 | tee "$OUT/train-fast$epochs.log"
  python3 -m fmnist evaluate /tmp/fast$epochs --data-dir .gpu/data 2>&1 | tee "$OUT/evaluate-fast$epochs.log"
done
