#!/usr/bin/env bash
# pad_config.sh OUT.yaml KEY=VALUE...: the CPU config (IPC10-cpu.yaml) with these keys last
# (PyYAML keeps the last of a repeated key). PAD_depth.py takes no option but --cfg: its
# first parse_args refuses any other before the config's keys become options.
set -e
out=$1; shift
cp "$(dirname "$0")/pad/configs/CIFAR-10/ConvIN/IPC10-cpu.yaml "$out"
printf '\n# run-specific (pad_config.sh)\n' >> "$out"
for kv in "$@"; do printf '%s: %s\n' "${kv%%=*}" "${kv#*=}" >> "$out"; done
