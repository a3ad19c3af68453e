"""Each memory's update seconds beside the training seconds of the same run, and the ratio.

Runs `ccl run` for every memory on split-digits (`--mem-size 20`) and, given a data
folder, at the CPU protocol (configs/runs/cpu-protocol.toml), and prints the seconds the
memory spent filling its slots, the seconds the learner spent training, summed over the
five experiences, and their ratio (the target: at most 1 for datadam, at most 2 for
pad). Both are measured in the same process on the same cores, so a loaded machine
inflates both; the ratio is the figure to read.

    python benchmarks/bench_memory_update.py [--data-dir DIR] [--memories herding,datadam,pad] [--seeds 0] [--set k=v]

`--set` overrides apply to every condensing memory, e.g. `--set iterations=50`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from ccl.config import parse_override, read_toml
from ccl.experiment import make_config, prepare
from ccl.runner import run

DIGITS = {"scenario": "split-digits", "mem_size": 20}
CONDENSING = ("dm", "datadam", "mtt", "pad")


def seconds(protocol: dict, memory: str, seed: int, overrides: dict, data_dir: str | None) -> tuple[list, list]:
    settings = overrides if memory in CONDENSING else {}
    cfg = make_config(**protocol, memory=memory, seed=seed, data_dir=data_dir, download=False,
                      memory_settings=settings)
    with tempfile.TemporaryDirectory() as runs:
        results = json.loads((run(prepare(cfg), Path(runs), progress=False) / "results.json").read_text())
    return results["memory_update_seconds"], results["train_seconds"]


def main() -> None:
    warnings.filterwarnings("ignore")  # the runs' own warnings (PAD's step counts) would bury the table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10's folder: adds the CPU protocol")
    parser.add_argument("--memories", default="herding,datadam,pad")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.overrides)
    protocols = {"split-digits": DIGITS}
    if args.data_dir:
        protocols["cpu-protocol"] = read_toml(Path(__file__).parents[1] / "configs/runs/cpu-protocol.toml")
    print(f"{'protocol':<13} {'memory':<9} {'seed':>4} {'update s':>9} {'train s':>8} {'ratio':>6}  update per experience")
    for name, protocol in protocols.items():
        for memory in args.memories.split(","):
            for seed in map(int, args.seeds.split(",")):
                update, train = seconds(protocol, memory, seed, overrides, args.data_dir)
                print(f"{name:<13} {memory:<9} {seed:>4} {sum(update):9.1f} {sum(train):8.1f} "
                      f"{sum(update) / sum(train):6.2f}  {' '.join(f'{s:.1f}' for s in update)}", flush=True)


if __name__ == "__main__":
    main()
