#!/usr/bin/env bash
# Builds the scratch folder REF_DIR (default /tmp/ccl-reference) from scratch: the reference
# code exported unmodified at the commits below, the minimal patches (patch.py), the packages
# ccl's environment lacks (site/), ccl-format copies of DataDAM's initial synthetic sets, and
# the PAD config for the CPU budget. Then run COMMANDS.sh (README.md: what differs, times).
#   DATADAM_GIT, PAD_GIT  git folders or URLs of the two repositories (default: GitHub)
#   CCL_DATA_DIR          the folder holding cifar10/ (as `ccl run --data-dir`)
#   PY                    the Python with ccl installed (default: python)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REF_DIR=${REF_DIR:-/tmp/ccl-reference}
PY=${PY:-python}
export REF_DATA_DIR=${CCL_DATA_DIR:?the folder holding cifar10/}
mkdir -p "$REF_DIR" && cp -r "$HERE/patch.py" "$HERE/pad_config.sh" "$HERE/shim" "$REF_DIR/" && cd "$REF_DIR"
repo() {  # repo GIT NAME: a git folder to read, cloned bare first when GIT is a URL
  case "$1" in *://*) [ -d "$2.git" ] || git clone -q --bare "$1" "$2.git"; echo "$REF_DIR/$2.git";; *) echo "$1";; esac
}
export_tree() {  # export_tree GITDIR COMMIT DEST: every blob of the commit (a missing LFS-sized one is skipped)
  rm -rf "$3"; mkdir -p "$3"
  git -C "$1" ls-tree -r "$2" | while read -r _ _ hash path; do
    mkdir -p "$3/$(dirname "$path")"
    git -C "$1" cat-file blob "$hash" > "$3/$path" 2>/dev/null || { echo "not in the mirror: $path"; rm -f "$3/$path"; }
  done
}
export_tree "$(repo "${DATADAM_GIT:-https://github.com/DataDistillation/DataDAM.git}" datadam-src)" 0f6ea09ed019073933c9bd46382cd4aa3bec7fb8 datadam
export_tree "$(repo "${PAD_GIT:-https://github.com/NUS-HPC-AI-Lab/PAD.git}" pad-src)" f1e3e28ec4c7a8849339ee5edffd45d8881b1abf pad
$PY patch.py
# kornia, einops (imported at the top of utils.py / networks.py) and yacs (PAD's cfg), without
# their dependencies (torch, numpy, pyyaml are the venv's).
[ -d site/kornia ] || $PY -m pip install -q --no-deps --target site kornia==0.9.0 kornia_rs==0.2.0 einops==0.8.2 yacs==0.1.8
mkdir -p out
PYTHONPATH=shim $PY - <<'PY'
import torch, local_data
for ipc in (1, 10):
    x = torch.load(f"datadam/Initial_Synthetic_Dataset/CIFAR10_IPC{ipc}_images.pt", map_location="cpu")
    y = torch.load(f"datadam/Initial_Synthetic_Dataset/CIFAR10_IPC{ipc}_labels.pt", map_location="cpu")
    local_data.save_set(f"out/init-ipc{ipc}.pt", x, y.long(), "datadam-reference-initial", ipc)
PY
# PAD: the reference's CIFAR-10 IPC 10 config with what the CPU budget and the shared
# evaluation change (README.md lists why); Iteration, buffer_path and out come on the command line.
sed -e 's/^zca: True/zca: False/' -e 's/^eval_it: 500/eval_it: 1000000000/' \
    -e 's/^max_start_epoch: 20/max_start_epoch: 3/' -e 's/^current_max_start_epoch: 10/current_max_start_epoch: 3/' \
    -e "s#^data_path: ../dataset#data_path: ${CCL_DATA_DIR}#" \
    pad/configs/CIFAR-10/ConvIN/IPC10.yaml > pad/configs/CIFAR-10/ConvIN/IPC10-cpu.yaml
printf "\nparall_eva: True\n" >> pad/configs/CIFAR-10/ConvIN/IPC10-cpu.yaml
diff pad/configs/CIFAR-10/ConvIN/IPC10.yaml pad/configs/CIFAR-10/ConvIN/IPC10-cpu.yaml || true
