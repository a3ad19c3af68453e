#!/usr/bin/env bash
# Everything that needs a GPU, in one call of about 9 minutes on one H100/H200 (BUDGET, one
# deadline for every step, so a hang costs only its own step):
#   - the packages the GPU machine lacks, installed offline from WHEELS (built beforehand by
#     benchmarks/device_wheels.sh where PyPI is reachable), and CIFAR-10 unpacked from an
#     archive when DATA is one (decoded once, before the steps that read it);
#   - DataDAM at its paper's budget (configs/datadam-paper.toml, 8,000 iterations) at IPC 1
#     and 10, random real images at the same IPCs, each set evaluated as the papers do
#     (1,000 epochs, 3 networks);
#   - PAD at IPC 10 with configs/pad-paper.toml from a cached expert set
#     (benchmarks/pad_cached.py: EXPERTS, or trained here into it: PAD_EXPERTS experts and
#     PAD_SCORERS EL2N networks, the paper's 100 and 10 do not fit a lease), matched for as
#     many iterations as fit, then evaluated likewise;
#   - mammoth's Seq-CIFAR-10 at buffer 200 (configs/runs/mammoth-seq-cifar10.toml) for each
#     of MAMMOTH (er der++), seed 0, MAMMOTH_EPOCHS epochs a task (50 in mammoth; 10 is a
#     guess at what fits beside the rest), cut at the deadline if need be (runs.json then
#     holds the experiences done, read from the checkpoints);
#   - tests/test_cuda.py, then the whole suite on CUDA (runs pick `auto`).
# Every step's exit status and seconds land in OUT/steps.tsv; OUT holds six files (the
# device tool brings back eight): device.txt, steps.tsv, runs.json, sets.json, pytest.log,
# logs.tar.gz (every step's log, the sets and their grids).
#
# On the GPU machine, from the repository root, after `bash benchmarks/device_wheels.sh`
# here (it fills the ignored folder .device/ with the wheels and the CIFAR-10 archive):
#   run(command="WHEELS=.device/wheels bash benchmarks/device_check.sh .device/cifar10-jpeg.tar.gz $OUT",
#       carry=[".device"], timeout_s=600)
# Elsewhere: [WHEELS=DIR] [EXPERTS=FILE] [BUDGET=SECONDS] [TINY=1] bash benchmarks/device_check.sh DATA OUT
# DATA is a folder `ccl --data-dir` reads or a .tar.gz of one. TINY=1 shrinks every step
# to seconds on a CPU (tests/test_device_check.py runs it so, end to end, on generated
# data): a GPU call then fails only for what the GPU brings.
set -uo pipefail
data=$(realpath "${1:?CIFAR-10 folder or .tar.gz}"); out=${2:?output folder}
mkdir -p "$out" && out=$(cd "$out" && pwd)
[ -n "${WHEELS:-}" ] && WHEELS=$(realpath "$WHEELS"); [ -n "${EXPERTS:-}" ] && EXPERTS=$(realpath "$EXPERTS")
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
# This tree's ccl, for the scripts run by path too: the GPU machine has none installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2  # many runs share the machine's cores
deadline=$(( $(date +%s) + ${BUDGET:-510} ))
left() { local s=$(( deadline - $(date +%s) - ${1:-0} )); echo $(( s > 5 ? s : 5 )); }
work=${WORK:-/tmp/ccl-device}
logs=$work/logs sets=$work/sets
rm -rf "$logs" "$sets" "$work/mammoth" && mkdir -p "$logs" "$sets"
: > "$out/steps.tsv"

# step NAME SECONDS COMMAND...: COMMAND under a time limit (never past the deadline; under
# TINY the deadline alone, as a loaded CPU is slow everywhere), its output in logs/NAME.log,
# and a line "NAME exit-status seconds" in steps.tsv whatever it did.
step() {
  local name=$1 limit=$2 began=$(date +%s) rc; shift 2
  [ -n "${TINY:-}" ] || [ "$limit" -gt "$(left)" ] && limit=$(left)
  timeout "$limit" "$@" > "$logs/$name.log" 2>&1; rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - began ))" >> "$out/steps.tsv"
  return $rc
}

if [ -n "${TINY:-}" ]; then  # seconds on a CPU, every command as on the GPU
  run_size="--epochs 1 --train-per-class 6 --mem-size 20"
  set_size="--train-per-class 10"; datadam_size="--set iterations=2"; eval_size="--epochs 2 --networks 1"
  pad_size="--train-per-class 10 --set width=16 --set num_experts=1 --set score_networks=1 --set score_epochs=1
            --set max_start_epoch=1 --set expert_epochs=1 --set syn_steps=2 --set iterations=2"
  suite=${SUITE:-tests/test_layers.py}
else
  run_size="--epochs ${MAMMOTH_EPOCHS:-10}"
  set_size=""; datadam_size=""; eval_size="--epochs 1000 --networks 3"
  pad_size="--set num_experts=${PAD_EXPERTS:-2} --set score_networks=${PAD_SCORERS:-2}"
  suite=${SUITE:-tests}
fi

if [ -n "${WHEELS:-}" ]; then  # no registry there: only what the folder holds, nothing pulled in
  step install 120 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --find-links "$WHEELS" --target "$work/site" --upgrade -r "$WHEELS/requirements.txt"
  export PYTHONPATH="$PYTHONPATH:$work/site"
fi
if [ -f "$data" ]; then
  rm -rf "$work/data" && mkdir -p "$work/data" && step unpack 60 tar -xzf "$data" -C "$work/data"
  data=$work/data
fi

{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step versions 60 "$py" -c "import sys, ccl.cli, torch, avalanche  # ccl first: it stands in for the wandb avalanche imports
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'avalanche', avalanche.__version__)"
  cat "$logs/versions.log"
  # Decoded once here (its cache beside the data): the steps below only read it.
  step data 120 "$py" -c "import sys; from pathlib import Path; from ccl.data import load_dataset
d = load_dataset('cifar10', Path(sys.argv[1])); print('cifar10', d.train_x.shape, d.test_x.shape)" "$data"
  cat "$logs/data.log"
} > "$out/device.txt" 2>&1

for strategy in ${MAMMOTH:-er der++}; do
  step "mammoth-$strategy" "$(left 40)" "$py" -m ccl.cli run --config configs/runs/mammoth-seq-cifar10.toml \
    --data-dir "$data" --strategy "$strategy" --seed 0 $run_size --quiet --runs-dir "$work/mammoth" &
done

evaluated() {  # NAME SET: the set evaluated as the papers do, its figures beside it (.eval.json)
  step "eval-$1" "$(left 10)" "$py" -m ccl.cli evaluate "$2" $eval_size --data-dir "$data" --quiet
}
for ipc in 1 10; do
  ( step "datadam-ipc$ipc" "$(left 150)" "$py" -m ccl.cli condense --method datadam --config datadam-paper \
      --ipc $ipc $set_size $datadam_size --data-dir "$data" --quiet --out "$sets/datadam-ipc$ipc.pt" &&
    evaluated "datadam-ipc$ipc" "$sets/datadam-ipc$ipc.pt" ) &
  ( step "random-ipc$ipc" 120 "$py" -m ccl.cli condense --method random --ipc $ipc $set_size --data-dir "$data" \
      --quiet --out "$sets/random-ipc$ipc.pt" &&
    evaluated "random-ipc$ipc" "$sets/random-ipc$ipc.pt" ) &
done
( step pad-ipc10 "$(left 60)" "$py" benchmarks/pad_cached.py --data-dir "$data" --config pad-paper --ipc 10 \
    $pad_size --experts "${EXPERTS:-$work/pad-experts.pt}" --seconds "$(left 110)" --out "$sets/pad-ipc10.pt" &&
  evaluated pad-ipc10 "$sets/pad-ipc10.pt" ) &

workers=$("$py" -c "import xdist" 2>/dev/null && echo "-n 6")  # pytest-xdist, where installed
( step cuda-tests 150 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
  # not tests/test_device_check.py: it runs this script
  step suite "$(left 30)" "$py" -m pytest -q -p no:cacheprovider $workers --ignore=tests/test_device_check.py $suite ) &
wait

# Every run's figures, finished or cut (results.json, else the checkpoint's rows so far),
# and every set's (its settings, what was cut, its evaluation).
step summary 60 "$py" - "$work" "$out" <<'PY'
import json, sys
from pathlib import Path
import torch
work, out = Path(sys.argv[1]), Path(sys.argv[2])
keys = ("final_average_accuracy", "average_forgetting", "train_seconds", "memory_update_seconds",
        "peak_gpu_mib", "accuracy_matrix")
runs = {}
for run in sorted(work.glob("mammoth/*/")):
    config = json.loads((run / "config.json").read_text())
    if (run / "results.json").exists():
        r = json.loads((run / "results.json").read_text())
        runs[run.name] = {k: r.get(k) for k in keys} | {"config": config}
    elif (run / "checkpoint.pt").exists():
        r = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["results"]
        runs[run.name] = {"cut_after_experience": len(r["accuracy_matrix"]) - 1,
                          **{k: r.get(k) for k in ("accuracy_matrix", "average_accuracy", "forgetting", "train_seconds")},
                          "config": config}
sets = {}
for path in sorted(work.glob("sets/*.pt")):
    s = torch.load(path, map_location="cpu", weights_only=True)
    evaluation = path.with_suffix(".eval.json")
    sets[path.stem] = {"method": s["method"], "ipc": s["ipc"], "seconds": s["seconds"], "settings": s["settings"],
                       "stats": {k: v for k, v in s["stats"].items() if not isinstance(v, (list, dict))},
                       "evaluation": json.loads(evaluation.read_text()) if evaluation.exists() else None}
(out / "runs.json").write_text(json.dumps(runs, indent=1))
(out / "sets.json").write_text(json.dumps(sets, indent=1))
print(len(runs), "runs,", len(sets), "sets")
PY
tail -n 5 "$logs/cuda-tests.log" > "$out/pytest.log"; tail -n 25 "$logs/suite.log" >> "$out/pytest.log"
tar -czf "$out/logs.tar.gz" -C "$work" logs sets
cat "$out/steps.tsv"
