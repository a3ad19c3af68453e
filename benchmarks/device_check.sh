#!/usr/bin/env bash
# One pass over everything that needs a GPU, sized for a short lease (about 9 minutes on
# one H100/H200, every step under one deadline so a hang costs only its own step):
#   A. the test suite on CUDA (runs pick `auto`, tests/test_cuda.py stops skipping), full
#      Split CIFAR-10 runs of each replay memory side by side, DataDAM at its paper's
#      budget (CIFAR-10 IPC 10, 8,000 iterations) against random real images;
#   B. the long CPU protocol (configs/runs/cpu-long.toml) under a reservoir, er / er-ace /
#      der++, seeds 0-2 -- and, with BEFORE=DIR, the same runs from another source tree
#      (a `git archive` of an earlier commit), for a before/after pair on one machine;
#   C. the benchmarks;
#   alongside all of it, mammoth's Seq-CIFAR-10 (configs/runs/mammoth-seq-cifar10.toml)
#   for er, er-ace and der++, cut at the deadline (the experiences done are read from
#   their checkpoints).
# Figures land in OUT as at most eight files (the device tool's limit).
#
#   [BEFORE=DIR] [BUDGET=SECONDS] bash benchmarks/device_check.sh CIFAR_DIR OUT
set -uo pipefail
data=${1:?CIFAR-10 folder}; out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2  # many runs share the machine's cores
deadline=$(( $(date +%s) + ${BUDGET:-520} ))
left() { local s=$(( deadline - $(date +%s) - ${1:-0} )); echo $(( s > 5 ? s : 5 )); }
runs=/tmp/ccl-device; mkdir -p $runs/logs $runs/sets

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, avalanche; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$out/device.txt"
timeout 100 python3 -c "import sys; from pathlib import Path; from ccl.data import load_dataset; \
load_dataset('cifar10', Path(sys.argv[1]), download=False)" "$data" >> "$out/device.txt" 2>&1

# Alongside everything: mammoth's protocol, each strategy at its preset's settings.
for strategy in er er-ace der++; do
  timeout "$(left 25)" python3 -m ccl.cli run --config configs/runs/mammoth-seq-cifar10.toml --data-dir "$data" \
    --strategy "$strategy" --seed 0 --quiet --runs-dir $runs/mammoth > "$runs/logs/mammoth-$strategy.log" 2>&1 &
done

# A.
(
  for memory in random herding herding-soft datadam pad; do
    timeout 240 python3 -m ccl.cli run --scenario split-cifar10 --data-dir "$data" --memory "$memory" --seed 0 \
      --quiet --runs-dir $runs/cifar > "$runs/logs/cifar-$memory.log" 2>&1 &
  done
  wait
) & cifar=$!
(
  for method in datadam random; do
    timeout 200 python3 -m ccl.cli condense --method $method --ipc 10 --data-dir "$data" --quiet \
      $([ $method = datadam ] && echo --config datadam-paper) --out $runs/sets/$method.pt > "$runs/logs/condense-$method.log" 2>&1 &&
    timeout 100 python3 -m ccl.cli evaluate $runs/sets/$method.pt --epochs 1000 --networks 3 --data-dir "$data" \
      --quiet >> "$runs/logs/condense-$method.log" 2>&1 &
  done
  wait
) & sets=$!
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 6")  # pytest-xdist, where installed
timeout 230 python3 -m pytest -q -p no:cacheprovider $workers tests > "$runs/logs/pytest.log" 2>&1 & tests=$!

# B, once the CIFAR runs have freed their cores.
wait $cifar
long() {  # NAME SOURCE_TREE STRATEGY...
  local name=$1 tree=$2; shift 2
  for strategy in "$@"; do for seed in 0 1 2; do
    (cd "$tree" && timeout "$(left 100)" python3 -m ccl.cli run --config configs/runs/cpu-long.toml \
      --data-dir "$data" --memory reservoir --strategy "$strategy" --seed $seed --quiet --runs-dir $runs/$name \
      > "$runs/logs/$name-$strategy-$seed.log" 2>&1) &
  done; done
}
long long "$PWD" er er-ace der++
# `python3 -m` puts the working folder first on sys.path: each tree runs its own ccl.
[ -n "${BEFORE:-}" ] && long long-before "$(cd "$BEFORE" && pwd)" er-ace der++
wait $tests $sets

# C, when B is done (the GPU still shares with mammoth's runs: said in bench.log).
while [ "$(pgrep -fc 'cpu-long.toml')" -gt 0 ] && [ "$(left)" -gt 100 ]; do sleep 2; done
{
  echo "(shared with mammoth's runs where they still ran)"
  timeout "$(left 60)" python3 benchmarks/bench_pad.py --device cuda --steps 10,20,40 --iterations 3 --warmup 1
  timeout "$(left 40)" python3 benchmarks/bench_datadam.py --device cuda --iterations 10
  timeout "$(left 10)" python3 benchmarks/bench_replay.py --data-dir "$data" --device cuda
} 2>&1 | grep -v Warning > "$out/bench.log"
wait

# Every run's figures, finished or cut: results.json, else the checkpoint's rows so far.
python3 - "$runs" "$out/runs.json" <<'PY'
import json, sys
from pathlib import Path
import torch
keys = ("final_average_accuracy", "average_forgetting", "train_seconds", "memory_update_seconds",
        "peak_gpu_mib", "accuracy_matrix")
rows = {}
for run in sorted(Path(sys.argv[1]).glob("*/*/")):
    name = f"{run.parent.name}/{run.name}"
    if (run / "results.json").exists():
        r = json.loads((run / "results.json").read_text())
        rows[name] = {k: r.get(k) for k in keys} | {"config": json.loads((run / "config.json").read_text())}
    elif (run / "checkpoint.pt").exists():
        r = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["results"]
        rows[name] = {"cut_after_experience": len(r["accuracy_matrix"]) - 1,
                      **{k: r.get(k) for k in ("accuracy_matrix", "average_accuracy", "forgetting", "train_seconds")},
                      "config": json.loads((run / "config.json").read_text())}
Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
print(len(rows), "runs")
PY
tail -n 25 $runs/logs/pytest.log > "$out/pytest.log"
cat $runs/logs/condense-*.log > "$out/sets.log" 2>&1
tar -czf "$out/logs.tar.gz" -C $runs logs
python3 -m ccl.cli report $runs/cifar > "$out/report.txt" 2>&1
