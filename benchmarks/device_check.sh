#!/usr/bin/env bash
# One pass over everything that needs a GPU, sized for a short lease (about 8 minutes on
# one H100/H200; up to 9 with mammoth's protocol alongside): the test suite on CUDA (runs
# pick `auto`, and tests/test_cuda.py stops
# skipping), full Split CIFAR-10 runs of each replay memory side by side, then the
# benchmarks on an otherwise idle GPU. Each step has its own time limit, so a hang costs
# only that step; logs and results go to OUT.
#
#   bash benchmarks/device_check.sh CIFAR_DIR OUT   (CIFAR_DIR: class folders or torchvision's)
set -uo pipefail
data=${1:?CIFAR-10 folder}; out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, avalanche; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/device.txt"

# Runs: decode the data once (the .npz cache), then every memory at once on the GPU.
(
  timeout 100 python3 -c "import sys; from pathlib import Path; from ccl.data import load_dataset; \
load_dataset('cifar10', Path(sys.argv[1]), download=False)" "$data"
  for memory in random herding datadam pad mtt; do
    timeout 240 python3 -m ccl.cli run --scenario split-cifar10 --data-dir "$data" --no-download \
      --memory "$memory" --seed 0 --quiet --runs-dir /tmp/device-runs > "/tmp/run-$memory.log" 2>&1 &
  done
  wait
) &
runs=$!

# mammoth's Seq-CIFAR-10 (ResNet-18, 50 epochs a task, reservoir buffer of 200) for er,
# er-ace and der++ side by side, to stand beside the published 44.8 / 63.2 / 64.9.
(
  for strategy in er er-ace der++; do
    timeout 540 python3 -m ccl.cli run --config configs/runs/mammoth-seq-cifar10.toml --data-dir "$data" \
      --no-download --strategy "$strategy" --seed 0 --quiet --runs-dir /tmp/mammoth-runs \
      > "/tmp/mammoth-$strategy.log" 2>&1 &
  done
  wait
) &
mammoth=$!

workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 6")  # pytest-xdist, where installed
timeout 200 python3 -m pytest -q -p no:cacheprovider $workers tests 2>&1 | tail -n 40 | tee "$out/pytest.log"
wait $runs
tail -n 3 /tmp/run-*.log > "$out/runs.log"
python3 -m ccl.cli report /tmp/device-runs 2>&1 | tee -a "$out/runs.log"
wait $mammoth
tail -n 3 /tmp/mammoth-*.log > "$out/mammoth.log"  # a run cut by its time limit says so in its log
python3 - "$out/runs.json" <<'PY'
import json, sys
from pathlib import Path
keys = ("final_average_accuracy", "average_forgetting", "train_seconds", "memory_update_seconds",
        "peak_gpu_mib", "memory_updates")
rows = {d.name: {k: json.loads((d / "results.json").read_text()).get(k) for k in keys}
        for d in sorted(Path("/tmp/device-runs").glob("*")) if (d / "results.json").exists()}
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
PY

{
  timeout 120 python3 benchmarks/bench_pad.py --device cuda --steps 10,20,40 --iterations 3 --warmup 1
  timeout 45 python3 benchmarks/bench_datadam.py --device cuda --iterations 10
  timeout 60 python3 benchmarks/bench_replay.py --data-dir "$data" --device cuda
} 2>&1 | grep -v Warning | tee "$out/bench.log"
