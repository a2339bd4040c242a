#!/usr/bin/env bash
# The GPU check, as one prepared script for a lent GPU machine (the `device` tool): every tier of the
# accuracy-time frontier on CUDA — the report's network, the speed tier (cnn94) and the accuracy tier
# (res95) — one seed each through `fmnist reproduce` (accuracy, seconds, time to each target, the
# frontier figure), plus each model's training step against plain eager PyTorch. Results go to $OUT.
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
for model in seed-cnn cnn94 res95; do
  python3 -m fmnist bench --device cuda --model $model --json > "$OUT/bench-$model.json" || true
done
python3 -m fmnist reproduce --device cuda --data-dir .gpu/data --model seed-cnn --model cnn94 --model res95 \
  --seeds 1 --target 0.95 --target 0.955 --quiet --out /tmp/frontier 2>&1 | tail -40 | tee "$OUT/reproduce.log"
cp /tmp/frontier/comparison.md /tmp/frontier/comparison.json /tmp/frontier/frontier.png "$OUT/"
