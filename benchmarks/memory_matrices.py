"""Every memory x strategy pair's accuracy matrix from `ccl run`, for a refactor's
bit-for-bit check.

    python benchmarks/memory_matrices.py record matrices.json   # before the change
    python benchmarks/memory_matrices.py check matrices.json    # after: pair -> identical
    JOBS=2 python benchmarks/memory_matrices.py check matrices.json der   # 2 at a time, pairs with "der"

A record writes matrices.partial.json as it goes (and a cut-short record goes on from
it); a check writes matrices.check.json, and follows a record that is still running.

Each pair runs the real CLI (`ccl run ... --epochs 1 --seed 0` on split-digits, small
per-class counts and short condensations, so all pairs take minutes) in a child forked
from one process that imported ccl once: the import is paid once, and no state leaks
from one pair into the next. A pair that stops with a CclError records its message, so
a refusal that changes is caught too. A few extra rows cover the memory's optional
paths (stream slots, uint8 storage, the GDumb protocol, a resumed checkpoint).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

from ccl.cli import main  # noqa: E402
from ccl.names import MEMORIES, STRATEGIES  # noqa: E402

SHORT = ["--scenario", "split-digits", "--epochs", "1", "--seed", "0", "--train-per-class", "16",
         "--test-per-class", "8", "--mem-size", "40", "--width", "8", "--quiet", "--device", "cpu"]
# condensation kept to a few steps: the point is that the same numbers come out, not good ones
CONDENSE = {"dm": ["--set", "iterations=5"], "datadam": ["--set", "iterations=5"],
            "mtt": ["--set", "iterations=3", "--set", "expert_epochs=1", "--set", "num_experts=1"],
            "pad": ["--set", "iterations=3", "--set", "expert_epochs=1", "--set", "num_experts=1"]}
STRATEGY = {"gdumb": ["--strategy-set", "epochs=1", "--strategy-set", "warmup_epochs=0"]}  # GDumb's fresh learner has its own epochs
EXTRA = {"er+stream-slots/random": ["--memory", "random", "--strategy", "er", "--stream-slots"],
         "der++/reservoir+uint8": ["--memory", "reservoir", "--strategy", "der++", "--mem-dtype", "uint8"],
         "er-ace/herding-soft+finetune": ["--memory", "herding-soft", "--strategy", "er-ace",
                                          "--finetune-epochs", "1"],
         "er/random+gdumb-protocol": ["--memory", "random", "--strategy", "er", "--protocol", "gdumb"]}


def _start(args: list[str], runs: Path) -> tuple[int, int]:
    """Run the CLI in a forked child; (its pid, the pipe its results come back on)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        out: dict
        try:
            torch.set_num_threads(1)  # the same float sums whatever the machine's load
            main.main(args=["run", *SHORT, "--runs-dir", str(runs), *args], standalone_mode=False)
            folder = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
            res = json.loads((folder / "results.json").read_text())
            out = {k: res[k] for k in ("accuracy_matrix", "memory_accuracy", "memory_fit_accuracy")}
        except SystemExit as e:
            out = {"error": f"exit {e.code}"}
        except Exception as e:  # noqa: BLE001 - a refusal is an outcome to compare
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    return pid, read


def _finish(pid: int, read: int) -> dict:
    """The child's matrices, or the error it stopped with."""
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


# the memories that exercise the on-device memory first, so a partial record is the useful part
ORDER = ("reservoir", "random", "herding-soft", "pad", "herding", "dm", "datadam", "mtt")


def pairs() -> dict[str, list[str]]:
    memories = sorted(MEMORIES, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))
    out = {f"{s}/{m}": ["--memory", m, "--strategy", s, *CONDENSE.get(m, []), *STRATEGY.get(s, [])]
           for m in memories for s in STRATEGIES}
    return EXTRA | out


def record(names: list[str], jobs: int = 1, partial: Path | None = None) -> dict:
    """The named pairs' results, `jobs` children at a time (each on one thread); with
    `partial`, written there as each finishes, and those already there are not run again."""
    results = json.loads(partial.read_text()) if partial is not None and partial.exists() else {}
    todo = {name: pairs()[name] for name in names if name not in results}
    running: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in [*todo.items(), *[(None, None)] * jobs]:
            if running and (len(running) == jobs or name is None):
                done, pid, read = running.pop(0)
                results[done] = _finish(pid, read)
                print(done, "error" if "error" in results[done] else "ok", file=sys.stderr, flush=True)
                if partial is not None:
                    partial.write_text(json.dumps(results, indent=1))
            if name is not None:
                runs = Path(tmp) / name.replace("/", "_")
                runs.mkdir()
                running.append((name, *_start(args, runs)))
    return {name: results[name] for name in names}


def check(path: Path, only: str | None, jobs: int) -> bool:
    """Run the pairs `path` recorded (following a record still being written, through its
    .partial.json) and print pair -> identical; True when every one is."""
    partial, out = path.with_suffix(".partial.json"), path.with_suffix(".check.json")
    while True:
        finished = path.exists()
        before = json.loads((path if finished else partial).read_text())
        now = json.loads(out.read_text()) if out.exists() else {}
        todo = [n for n in before if n not in now and (not only or only in n)]
        if todo:
            record(todo, jobs, out)
        elif finished:
            break
        else:
            time.sleep(30)
    now = {n: r for n, r in json.loads(out.read_text()).items() if n in before}
    same = 0
    for name, result in now.items():
        identical = before[name] == result
        same += identical
        print(f"{name:40s} {'identical' if identical else 'DIFFERENT'}")
    print(f"{same}/{len(now)} identical")
    return same == len(now)


if __name__ == "__main__":
    mode, path = sys.argv[1], Path(sys.argv[2])
    only = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
    jobs = int(os.environ.get("JOBS", "1"))
    if mode == "record":
        names = [n for n in pairs() if not only or only in n]
        path.write_text(json.dumps(record(names, jobs, path.with_suffix(".partial.json")), indent=1))
    else:
        sys.exit(0 if check(path, only, jobs) else 1)
