"""Human-readable views of run results: one run's table, and comparison reports.

A comparison report is built from saved run folders only (results.json, status.json,
config.json, memory.pt), so `ccl report` can rebuild it at any time without training.
Runs are grouped by memory; a memory whose runs differ in some other setting (say
mem_size, when two comparisons are reported together) is split into one group per value,
so different experiments are never averaged together. Numbers are mean ± sample standard
deviation (n - 1) over seeds.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ccl.cells import ERROR_FILE
from ccl.errors import CclError
from ccl.io import (CONFIG_SHAPE, GRID_SHAPE, STATUS_SHAPE, atomic_write, folder_lock, load_torch, read_json,
                    read_results, write_json, write_text)
from ccl.experiment import RunConfig


def summary_table(run_dir: Path) -> str:
    """Per-experience table of one run (classes by name where config.json has them), and
    its final figures."""
    run_dir = Path(run_dir)
    r = read_results(run_dir / "results.json")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else None
    names = config.get("classes") if isinstance(config, dict) else None
    groups = r["experience_classes"] if len(r["accuracy_matrix"]) > 1 else [sum(r["experience_classes"], [])]
    if not (isinstance(names, list) and all(0 <= c < len(names) for g in groups for c in g)):
        names = None
    cells = [",".join(str(names[c]) if names else str(c) for c in g) for g in groups]
    width = max(8, *(len(c) for c in cells))
    lines = [f"exp  {'classes':<{width}}  seen acc  all acc  forgetting  train s  memory s  eval s",
             f"---  {'-' * width}  --------  -------  ----------  -------  --------  ------"]
    for i, classes in enumerate(cells):
        lines.append(f"{i:>3}  {classes:<{width}}  {r['seen_accuracy'][i]:>8.3f}  "
                     f"{r['average_accuracy'][i]:>7.3f}  {r['forgetting'][i]:>10.3f}  "
                     f"{r['train_seconds'][i]:>7.1f}  {r['memory_update_seconds'][i]:>8.1f}  "
                     f"{r['eval_seconds'][i]:>6.1f}")
    m = r["memory_size"]
    lines.append(f"final average accuracy {r['final_average_accuracy']:.4f}, average forgetting "
                 f"{r['average_forgetting']:.4f}, BWT {r['final_bwt']:.4f}; memory {m['images']} images "
                 f"({m['bytes'] / 1024:.0f} KiB); {r['total_seconds']:.0f} s, peak RAM {r['peak_ram_mib']:.0f} MiB")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Collecting saved runs

# Run settings that never split a group: the seed is what we average over, the rest is
# where it ran.
NOT_GROUPING = {"memory", "seed", "device", "data_dir", "download"}


_RUN_DEFAULTS = dataclasses.asdict(RunConfig())


@dataclass
class RunRecord:
    """One saved run (or a comparison cell that failed before its run folder existed)."""
    folder: Path
    memory: str
    seed: int
    status: str                       # finished | failed | diverged | running | interrupted
    error: str | None = None
    settings: dict[str, Any] | None = None  # config.json "run"; None when no run folder exists
    results: dict[str, Any] | None = None   # results.json of a finished run
    label: str = ""                   # the group it is reported in (set by `group_runs`)
    axes: dict[str, Any] = field(default_factory=dict)  # what sets its group apart: strategy, memory, settings


def _read_run(folder: Path) -> RunRecord | None:
    """A run folder's record, or None when `folder` is not a ccl run folder."""
    try:
        config = read_json(folder / "config.json", CONFIG_SHAPE)
    except CclError:
        return None  # not a ccl run folder
    # Settings added to RunConfig after a run was made read as their defaults, so older
    # run folders group with new ones that did not change them.
    run = {**_RUN_DEFAULTS, **config["run"]}
    record = RunRecord(folder, run["memory"], run["seed"], "running", settings=run)
    try:
        state = read_json(folder / "status.json", STATUS_SHAPE) if (folder / "status.json").exists() \
            else {"status": "finished"}
        record.status, record.error = state.get("status", "unknown"), state.get("error")
        if record.status == "finished":
            record.results = read_results(folder / "results.json")
    except CclError as e:  # one corrupt file fails that run in the report, not the report
        record.status, record.error = "failed", str(e)
    return record


def collect_runs(dirs: Sequence[Path]) -> list[RunRecord]:
    """Every run folder under `dirs` (comparison folders, or plain folders of run folders),
    plus comparison cells that failed before a run folder was made."""
    records: dict[Path, RunRecord] = {}
    for root in map(Path, dirs):
        for path in sorted(root.rglob("config.json")):
            folder = path.parent.resolve()
            if folder not in records and ((folder / "status.json").exists() or (folder / "results.json").exists()):
                record = _read_run(folder)
                if record:
                    records[folder] = record
        for path in sorted(root.rglob(ERROR_FILE)):
            cell = path.parent.resolve()
            if any((d / "config.json").exists() for d in cell.iterdir() if d.is_dir()):
                continue  # the run folder's own status.json has the error
            try:
                e = read_json(path)
                records[cell] = RunRecord(cell, e["memory"], int(e["seed"]), "failed", e.get("error"))
            except (CclError, KeyError, TypeError, ValueError):
                continue
    return list(records.values())


def _value_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def group_runs(records: list[RunRecord], order: Sequence[str] = ()) -> dict[str, list[RunRecord]]:
    """Runs by group label, one run per seed (a finished one first, then the newest).

    A group is a strategy (when the runs have several) and a memory, and the settings in
    which runs of the same strategy and memory differ (e.g. "random mem_size=500");
    settings that follow from the strategy or memory alone (the resolved stream slots,
    say) never split or name a group. The memory size is the exception: once a scenario's
    runs span two sizes, every group of it names its size, so that rows pair (and
    curve.png draws them) size by size. Over runs of several scenarios the label starts
    with the scenario, and settings are compared within a scenario only.
    """
    def strategy(r: RunRecord) -> str:
        return str((r.settings or {}).get("strategy", "er"))

    by_key: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        by_key.setdefault(((r.settings or {}).get("scenario", ""), r.memory), []).append(r)
    several = len({s for s, _ in by_key}) > 1
    strategies = len({strategy(r) for r in records}) > 1
    rank = {m: i for i, m in enumerate(order)}
    sizes: dict[str, set[str]] = {}  # scenario -> the memory sizes its runs have
    for r in records:
        if r.settings is not None:
            sizes.setdefault(r.settings.get("scenario", ""), set()).add(_value_text(r.settings.get("mem_size")))
    groups: dict[str, list[RunRecord]] = {}
    for key in sorted(by_key, key=lambda k: (k[0], rank.get(k[1], len(rank)), k[1])):
        runs = by_key[key]
        configured = [r for r in runs if r.settings is not None]
        keys = sorted({k for r in configured for k in r.settings} - NOT_GROUPING - {"scenario", "strategy"})
        varying = [k for k in keys if (k == "mem_size" and len(sizes.get(key[0], ())) > 1)
                   or any(len({_value_text(r.settings.get(k)) for r in configured if strategy(r) == s}) > 1
                          for s in {strategy(r) for r in configured})]
        for r in runs:
            r.axes = {**({"scenario": key[0]} if several else {}), **({"strategy": strategy(r)} if strategies else {}),
                      "memory": key[1], **({k: r.settings.get(k) for k in varying} if r.settings else {})}
            parts = [f"{k}={_value_text(r.settings.get(k))}" for k in varying] if r.settings else []
            r.label = " ".join(([key[0]] if several and key[0] else []) + ([strategy(r)] if strategies else [])
                               + [key[1], *parts])
            groups.setdefault(r.label, []).append(r)
    return {label: _one_per_seed(runs) for label, runs in groups.items()}


def _one_per_seed(runs: list[RunRecord]) -> list[RunRecord]:
    best: dict[int, RunRecord] = {}
    for r in sorted(runs, key=lambda r: (r.status == "finished", r.folder.stat().st_mtime)):
        best[r.seed] = r  # later in the order wins: finished over not, then newer
    return [best[s] for s in sorted(best)]


# ---------------------------------------------------------------------------------------
# Numbers

def stats(values: Sequence[float]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (None for one value), min, max and the values."""
    values = [float(v) for v in values]
    if not values:
        return None
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "n": len(values), "values": values}


def _series(runs: list[RunRecord], key: str) -> dict[str, list[float]] | None:
    """Per-step mean, min and max of a per-experience series over seeds."""
    rows = [r.results[key] for r in runs]
    if not rows:
        return None
    if len({len(row) for row in rows}) > 1:
        raise CclError(f"{key} has different lengths in {', '.join(str(r.folder) for r in runs)}; "
                       "these runs are not the same experiment")
    steps = list(zip(*rows))
    return {"mean": [statistics.mean(s) for s in steps], "min": [min(s) for s in steps],
            "max": [max(s) for s in steps]}


def _mean_matrix(runs: list[RunRecord]) -> list[list[float]] | None:
    matrices = [r.results["accuracy_matrix"] for r in runs]
    if not matrices:
        return None
    if len({(len(m), len(m[0])) for m in matrices}) > 1:
        raise CclError(f"accuracy matrices differ in shape in {', '.join(str(r.folder) for r in runs)}")
    return [[statistics.mean(cells) for cells in zip(*rows)] for rows in zip(*matrices)]


def summarise_group(label: str, runs: list[RunRecord], out: Path) -> dict[str, Any]:
    """One memory's line of the comparison, from its runs (one per seed)."""
    done = [r for r in runs if r.status == "finished"]
    res = [r.results for r in done]
    return {
        "label": label, "memory": runs[0].memory, "axes": runs[0].axes,
        "final_by_seed": {str(r.seed): r.results["final_average_accuracy"] for r in done},
        "seeds": {"finished": [r.seed for r in done],
                  "failed": [r.seed for r in runs if r.status == "failed"],
                  "diverged": [r.seed for r in runs if r.status == "diverged"],
                  "unfinished": [r.seed for r in runs if r.status not in ("finished", "failed", "diverged")]},
        "final_average_accuracy": stats([x["final_average_accuracy"] for x in res]),
        "average_forgetting": stats([x["average_forgetting"] for x in res]),
        "final_bwt": stats([x["final_bwt"] for x in res]),
        # totals over the stream, seconds
        "memory_update_seconds": stats([sum(x["memory_update_seconds"]) for x in res]),
        "train_seconds": stats([sum(x["train_seconds"]) for x in res]),
        "memory_images": stats([x["memory_size"]["images"] for x in res]),
        "memory_bytes": stats([x["memory_size"]["bytes"] for x in res]),
        "memory_dtype": next((x["memory_size"].get("dtype") for x in res if x["memory_size"].get("dtype")), None),
        "seen_accuracy": _series(done, "seen_accuracy"),
        "average_accuracy": _series(done, "average_accuracy"),
        "accuracy_matrix": _mean_matrix(done),
        "joint": bool(res) and len(res[0]["accuracy_matrix"]) == 1 and len(res[0]["experience_classes"]) > 1,
        # what this memory was given beyond its preset (`--set`, `--memory-config`); the
        # resolved settings are in each run's config.json
        "memory_overrides": _overrides(runs),
        "runs": [{"seed": r.seed, "status": r.status, "error": r.error, "folder": os.path.relpath(r.folder, out)}
                 for r in runs],
    }


def _overrides(runs: list[RunRecord]) -> dict[str, Any]:
    settings = next((r.settings for r in runs if r.settings is not None), {})
    given = dict(settings.get("memory_settings") or {})
    if settings.get("memory_config"):
        given["preset"] = settings["memory_config"]
    return given


def shared_settings(records: list[RunRecord]) -> dict[str, Any]:
    """Run settings that every run shares (the memory-specific ones left out)."""
    configured = [r.settings for r in records if r.settings is not None]
    if not configured:
        return {}
    keys = sorted(set.intersection(*(set(s) for s in configured)) - NOT_GROUPING
                  - {"memory_settings", "memory_config"})
    return {k: configured[0][k] for k in keys if len({_value_text(s[k]) for s in configured}) == 1}


# The memory whose curve a memory-size axis measures every memory against
EQUIVALENT_REFERENCE = "herding"


def equivalent_size(sizes: Sequence[float], accuracies: Sequence[float], accuracy: float) -> tuple[str, float]:
    """The memory size at which a curve of accuracy against size first reaches `accuracy`.

    Args:
        sizes: the curve's sizes, ascending.
        accuracies: its accuracy at each size.

    Returns:
        ("=", size): read off the curve by linear interpolation in log(size) between the
        two sizes that bracket `accuracy` (a size run, exactly, when it hits one); ("<",
        sizes[0]) when the curve starts above `accuracy`; (">", sizes[-1]) when it never
        reaches it. Nothing is extrapolated. A curve that is not monotone is read at its
        first upward crossing: the smallest size that does as well.
    """
    if not sizes or len(sizes) != len(accuracies):
        raise ValueError(f"a curve needs one accuracy per size, got {len(sizes)} sizes and {len(accuracies)}")
    if accuracy <= accuracies[0]:
        return ("=" if accuracy == accuracies[0] else "<"), float(sizes[0])
    for (s0, a0), (s1, a1) in zip(zip(sizes, accuracies), zip(sizes[1:], accuracies[1:])):
        if accuracy == a1:
            return "=", float(s1)
        if a0 < accuracy < a1:  # every earlier point is below `accuracy`: the first crossing
            t = (accuracy - a0) / (a1 - a0)
            return "=", float(math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))))
    return ">", float(sizes[-1])


def add_herding_equivalents(groups: list[dict[str, Any]]) -> None:
    """Each group's herding-equivalent size, in its summary as `herding_equivalent`:
    {"relation": "=", "<" or ">", "size": the herding size, "worth": size / the group's},
    "one image of this memory is worth `worth` herding images" (see `equivalent_size`).
    Only where the runs span two memory sizes or more and herding ran: herding's curve is
    the mean final accuracy of its groups that share this group's other axes (strategy,
    scenario, settings), by size. A group with no such curve, or with two herding groups
    of one size to choose from (a setting only herding varies in), gets none."""
    sized = [g for g in groups if g["final_average_accuracy"] and not g["joint"] and _mem_size(g)]
    if len({_mem_size(g) for g in sized}) < 2:
        return
    reference = [g for g in sized if g["axes"].get("memory") == EQUIVALENT_REFERENCE]

    def others(g: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in g["axes"].items() if k not in ("memory", "mem_size")}

    for g in sized:
        mine = others(g)
        curve = sorted((_mem_size(h), h["final_average_accuracy"]["mean"]) for h in reference
                       if all(mine[k] == v for k, v in others(h).items() if k in mine))
        if not curve or len({size for size, _ in curve}) < len(curve):
            continue
        relation, size = equivalent_size([c[0] for c in curve], [c[1] for c in curve],
                                         g["final_average_accuracy"]["mean"])
        g["herding_equivalent"] = {"relation": relation, "size": size, "worth": size / _mem_size(g)}


def _equivalents_markdown(groups: list[dict[str, Any]]) -> list[str]:
    rows = [g for g in groups if g.get("herding_equivalent")]
    if not rows:
        return []
    axes = [k for k in dict.fromkeys(k for g in rows for k in g["axes"]) if k != "mem_size"] + ["mem_size"]
    memories = list(dict.fromkeys(g["axes"]["memory"] for g in groups))
    rows.sort(key=lambda g: ([_value_text(v) for k, v in g["axes"].items() if k not in ("memory", "mem_size")],
                             memories.index(g["axes"]["memory"]), _mem_size(g)))

    def bound(relation: str, value: float) -> str:
        number = f"{value:.0f}" if value >= 10 else f"{value:.2g}" if value < 1 else f"{value:.1f}"
        return number if relation == "=" else f"{relation} {number}"

    lines = ["", f"## {EQUIVALENT_REFERENCE.capitalize()}-equivalent size", "",
             f"The {EQUIVALENT_REFERENCE} memory size (same strategy and settings) at which {EQUIVALENT_REFERENCE}'s "
             "mean final accuracy equals the row's, read off its curve by linear interpolation in log(size) "
             f"between the sizes run; \"< N\": {EQUIVALENT_REFERENCE} at its smallest size N does better, "
             "\"> N\": at its largest size N it does worse (nothing extrapolated). Worth: that size over the "
             f"row's, one image of the memory worth so many {EQUIVALENT_REFERENCE} images.", "",
             "| " + " | ".join([*axes, "final avg accuracy", f"{EQUIVALENT_REFERENCE}-equivalent size", "worth"]) + " |",
             "|" + "---|" * (len(axes) + 3)]
    for g in rows:
        e = g["herding_equivalent"]
        lines.append("| " + " | ".join([*(_value_text(g["axes"].get(a, "–")) for a in axes),
                                        _fmt(g["final_average_accuracy"], 4), bound(e["relation"], e["size"]),
                                        bound(e["relation"], e["worth"])]) + " |")
    return lines


# ---------------------------------------------------------------------------------------
# Markdown

def _fmt(s: dict | None, digits: int) -> str:
    if s is None:
        return "–"
    if s["std"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _fmt_count(s: dict | None) -> str:
    if s is None:
        return "–"
    if s["min"] == s["max"]:
        return f"{int(s['mean']):,}"
    return f"{s['mean']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"


BASELINES = {"memory": "random", "strategy": "er"}  # what each axis is compared against, seed by seed


def paired_difference(group: dict[str, Any], groups: list[dict[str, Any]], axis: str) -> dict | None:
    """Final accuracy minus that of the group that differs only in `axis`, set to its
    baseline (random memory, er strategy), over the seeds both finished."""
    if axis not in group["axes"] or group["axes"][axis] == BASELINES[axis]:
        return None
    target = {**group["axes"], axis: BASELINES[axis]}
    base = next((g for g in groups if g["axes"] == target), None)
    if base is None:
        return None
    seeds = sorted(set(group["final_by_seed"]) & set(base["final_by_seed"]))
    return stats([group["final_by_seed"][s] - base["final_by_seed"][s] for s in seeds])


def _fmt_diff(s: dict | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:+.4f}" + (f" ± {s['std']:.4f}" if s["std"] is not None else "")


def comparison_markdown(summary: dict[str, Any]) -> str:
    scenario = summary["settings"].get("scenario")
    lines = [f"# Comparison: {scenario}" if scenario else "# Comparison", ""]
    settings = ", ".join(f"{k} {_value_text(v)}" for k, v in summary["settings"].items() if v is not None)
    groups = summary["memories"]
    axes = list(dict.fromkeys(k for g in groups for k in g.get("axes") or {"memory": g["memory"]}))
    values = {a: {(g.get("axes") or {}).get(a) for g in groups} for a in ("memory", "strategy")}
    diffs = [a for a in values if len(values[a]) > 1 and BASELINES[a] in values[a]]  # an axis with its baseline
    sized = len({_mem_size(g) for g in groups}) > 1
    lines += [f"Settings shared by all runs: {settings}." if settings else "", "",
              "Mean ± sample standard deviation over seeds (no ± with one seed), best final accuracy "
              + ("of each memory size " if sized else "") + "in bold; a row with a diverged run is not "
              "ranked (it comes last, never in bold: its mean is over the seeds that survived). "
              "Accuracy is on all classes after the last experience; "
              + "".join(f"Δ {BASELINES[a]} is the paired difference to the {BASELINES[a]} {a} "
                        "(same seeds, all else equal); " for a in diffs)
              + "times are totals over the stream, in seconds; memory bytes count what the final memory keeps "
                "of each row at its stored dtype (images, and soft targets and logits where it keeps them).", "",
              "| " + " | ".join([*axes, "seeds done / failed", "final avg accuracy",
                                 *(f"Δ {BASELINES[a]}" for a in diffs), "avg forgetting", "final BWT",
                                 "memory update s", "train s", "memory images", "memory bytes"]) + " |",
              "|" + "---|" * (len(axes) + 8 + len(diffs))]
    ordered = _as_the_table_sorts(groups)
    best: dict[int, dict] = {}  # memory size (0: not an axis) -> its best group, the first ranked one
    for g in ordered:
        if _ranked(g):
            best.setdefault(_mem_size(g), g)
    for g in ordered:
        seeds = g["seeds"]
        done = f"{len(seeds['finished'])} / {len(seeds['failed']) + len(_diverged(g))}"
        if _diverged(g):
            done += f" ({len(_diverged(g))} diverged)"
        if seeds["unfinished"]:
            done += f" (+{len(seeds['unfinished'])} unfinished)"
        final = _fmt(g["final_average_accuracy"], 4)
        cells = [_value_text((g.get("axes") or {"memory": g["memory"]}).get(a, "–")) for a in axes]
        lines.append("| " + " | ".join([*cells, done, f"**{final}**" if best.get(_mem_size(g)) is g else final,
                                        *(_fmt_diff(paired_difference(g, groups, a)) for a in diffs),
                                        _fmt(g["average_forgetting"], 4), _fmt(g["final_bwt"], 4),
                                        _fmt(g["memory_update_seconds"], 1), _fmt(g["train_seconds"], 1),
                                        _fmt_count(g["memory_images"]), _fmt_count(g["memory_bytes"])]) + " |")
    lines += _equivalents_markdown(groups)
    given = [f"{g['label']}: " + ", ".join(f"{k}={_value_text(v)}" for k, v in g["memory_overrides"].items())
             for g in summary["memories"] if g["memory_overrides"]]
    if given:
        lines += ["", f"Memory settings changed from their presets: {'; '.join(given)}."]
    problems = [(g["label"], run) for g in summary["memories"] for run in g["runs"] if run["status"] != "finished"]
    if problems:
        lines += ["", "## Failed or unfinished runs", ""]
        lines += [f"- {label} seed {run['seed']}: {run['status']}"
                  f"{' — ' + ' '.join(run['error'].split()) if run['error'] else ''} (`{run['folder']}`)" for label, run in problems]
    if summary["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in summary["notes"]]
    figures = summary["figures"]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Figures (matplotlib's object API with the Agg canvas: no pyplot, no global backend state)

def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: Path) -> None:
    """Write a PNG atomically: render to a temporary file beside it, then rename."""
    title = {"Title": fig.get_suptitle()} if fig.get_suptitle() else {}  # a PNG text chunk: readable without pixels
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight",  # long tick labels stay in
                                               metadata=title))


def slug(label: str) -> str:
    """A file-name-safe form of a group label."""
    label = label.replace("+", "p")  # der++ and der stay apart
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-") or "memory"


LINE_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P")]


def memory_looks(groups: list[dict[str, Any]]) -> dict[str, tuple[str, Any, str]]:
    """Colour, line style and marker of each memory, by its first row in the table's order:
    one look a memory keeps in every figure of a report."""
    memories = dict.fromkeys((g.get("axes") or {}).get("memory", g["label"]) for g in _as_the_table_sorts(groups))
    return {m: (f"C{i % 10}", *LINE_STYLES[i % len(LINE_STYLES)]) for i, m in enumerate(memories)}


def _short_label(g: dict[str, Any], left_out: Sequence[str]) -> str:
    """A group's label without the axes its panel names (as `group_runs` writes labels)."""
    axes = {k: v for k, v in (g.get("axes") or {"memory": g["label"]}).items() if k not in left_out}
    named = [str(axes.pop(k)) for k in ("scenario", "strategy", "memory") if k in axes]
    return " ".join(named + [f"{k}={_value_text(v)}" for k, v in axes.items()])


def _panel_title(axes: dict[str, Any]) -> str:
    return ", ".join(f"{v} images" if k == "mem_size" else str(v) if k in ("scenario", "strategy")
                     else f"{k}={_value_text(v)}" for k, v in axes.items())


def plot_accuracy(groups: list[dict[str, Any]], path: Path, look: dict[str, tuple] | None = None) -> None:
    """Accuracy on the classes seen so far after each experience: the curves of the table's
    rows, ending at its final accuracy (after the last experience every class is seen).
    Accuracy on all classes would climb by construction as classes arrive, a staircase
    that hides the few points memories differ by; the seen classes' accuracy shows how
    each one holds up. One panel per strategy when there are several (with a memory-size
    axis, a row of panels per strategy, one per size), panels and legend rows in the
    table's order; a memory keeps its colour, line style and marker (`look`, from
    `memory_looks`) everywhere, its points a little apart from the others' so that none
    hides another; a min–max band over seeds where a group has two or more; joint training
    (no stream) as a horizontal line at its accuracy."""
    ordered = _as_the_table_sorts(g for g in groups if g["seen_accuracy"])
    if not ordered:
        return
    look = look or memory_looks(ordered)
    panel_keys = [k for k in ("strategy", "mem_size") if any(k in (g.get("axes") or {}) for g in ordered)]
    panels: dict[tuple, list[dict[str, Any]]] = {}
    for g in ordered:  # panels as their best rows come in comparison.md
        panels.setdefault(tuple((g.get("axes") or {}).get(k) for k in panel_keys), []).append(g)
    if "mem_size" in panel_keys:  # a row per strategy, a column per size, smallest first
        strategies = list(dict.fromkeys(key[0] for key in panels)) if "strategy" in panel_keys else [None]
        sizes = sorted({key[-1] for key in panels})
        places = {key: (strategies.index(key[0]) if "strategy" in panel_keys else 0, sizes.index(key[-1]))
                  for key in panels}
    else:
        places = {key: (0, i) for i, key in enumerate(panels)}
    shape = (max(r for r, _ in places.values()) + 1, max(c for _, c in places.values()) + 1)
    memories = list(dict.fromkeys((g.get("axes") or {}).get("memory", g["label"]) for g in ordered))
    dodge = {m: 0.05 * (i - (len(memories) - 1) / 2) for i, m in enumerate(memories)}  # x offsets, experiences
    steps = max((len(g["seen_accuracy"]["mean"]) for g in ordered if not g["joint"]), default=1)
    several = any(len(g["seeds"]["finished"]) > 1 for g in ordered)  # one seed draws no band
    lowest = min(v for g in ordered for v in (g["seen_accuracy"]["min"] if not g["joint"]
                                               else g["seen_accuracy"]["mean"][-1:]))
    rows = max(len(members) for members in panels.values())
    fig = _figure(max(5.0, 4.2 * shape[1]), (3.6 + 0.22 * rows) * shape[0])
    axes = fig.subplots(*shape, sharey=True, squeeze=False)
    for key, members in panels.items():
        ax = axes[places[key]]
        for g in members:
            s, n = g["seen_accuracy"], len(g["seeds"]["finished"])
            memory = (g.get("axes") or {}).get("memory", g["label"])
            label = plain_text(_short_label(g, panel_keys))
            final = f"{_fmt(g['final_average_accuracy'], 3)} ({n} seed{'s' if n > 1 else ''})"
            color, style, marker = look[memory]
            if g["joint"]:
                ax.axhline(s["mean"][-1], color=color, linestyle=style, linewidth=1.2,
                           label=f"{label}, all data at once: {final}")
                continue
            x = [i + 1 + dodge[memory] for i in range(len(s["mean"]))]
            ax.plot(x, s["mean"], color=color, linestyle=style, marker=marker, markersize=5, linewidth=1.6,
                    label=f"{label}: {final}")
            if n > 1:
                ax.fill_between(x, s["min"], s["max"], color=color, alpha=0.15, linewidth=0)
        title = _panel_title({k: v for k, v in zip(panel_keys, key) if v is not None})
        ax.set(xlabel="experiences trained", xlim=(0.7, steps + 0.3), ylim=(max(0.0, lowest - 0.04), 1.01),
               title=plain_text(title) if title else None)
        ax.set_xticks(range(1, steps + 1))
        ax.grid(alpha=0.3)
        # below the panel, one row per line in the table's order: never over a curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False,
                  title="final accuracy" + (" (mean ± std)" if several else ""), title_fontsize="small")
    for ax in axes.flat:
        if not ax.has_data():
            ax.set_visible(False)  # a strategy that ran no cell of this size
    for row in axes:
        row[0].set_ylabel("accuracy on the classes seen so far")
    fig.suptitle("Accuracy after each experience on the classes seen so far (the last point: the table's final "
                 "accuracy)" + ("\nmean over seeds; band: min–max over seeds" if several else ""), fontsize=10)
    save_figure(fig, path)


def plot_curve(groups: list[dict[str, Any]], path: Path, look: dict[str, tuple] | None = None) -> bool:
    """Final accuracy on all classes against memory size (log scale, a tick at each size
    run): a line per memory, a panel per strategy (and per other setting the runs vary
    in), mean over seeds with a min–max band where a point has two or more seeds. Drawn
    only when the runs span two sizes or more; returns whether it was."""
    sized = [g for g in groups if g["final_average_accuracy"] and not g["joint"]
             and (g.get("axes") or {}).get("mem_size") is not None]
    sizes = sorted({g["axes"]["mem_size"] for g in sized})
    if len(sizes) < 2:
        return False
    look = look or memory_looks(sized)
    panels: dict[str, dict[str, list[dict[str, Any]]]] = {}  # panel title -> memory -> its groups
    for g in _as_the_table_sorts(sized):
        rest = {k: v for k, v in g["axes"].items() if k not in ("memory", "mem_size")}
        panels.setdefault(_panel_title(rest), {}).setdefault(g["axes"]["memory"], []).append(g)
    several = any(len(g["seeds"]["finished"]) > 1 for g in sized)
    lines = max(len(members) for members in panels.values())
    fig = _figure(max(5.0, 4.6 * len(panels)), 3.8 + 0.22 * lines)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, members) in zip(axes, panels.items()):
        for memory, line in members.items():
            line = sorted(line, key=lambda g: g["axes"]["mem_size"])
            x = [g["axes"]["mem_size"] for g in line]
            acc = [g["final_average_accuracy"] for g in line]
            color, style, marker = look[memory]
            ax.plot(x, [a["mean"] for a in acc], color=color, linestyle=style, marker=marker, markersize=6,
                    linewidth=1.6, label=plain_text(memory))
            if any(a["n"] > 1 for a in acc):
                ax.fill_between(x, [a["min"] for a in acc], [a["max"] for a in acc], color=color, alpha=0.15,
                                linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xticks([], minor=True)  # log scale's own minor ticks would crowd the sizes run
        ax.set(xlabel="memory size (images, log scale)", title=plain_text(title) if title else None)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize="small", frameon=False)
    axes[0].set_ylabel("final accuracy on all classes")
    fig.suptitle("Final accuracy against memory size" + ("\nmean over seeds; band: min–max over seeds"
                                                         if several else ""), fontsize=10)
    save_figure(fig, path)
    return True


def _diverged(group: dict[str, Any]) -> list[int]:
    return group["seeds"].get("diverged", [])  # a summary of an older ccl counted them as failed


def _ranked(group: dict[str, Any]) -> bool:
    """Whether a group takes part in the ranking: it has a final accuracy and no run of it
    diverged (a mean over the seeds that survived would flatter it)."""
    return bool(group["final_average_accuracy"]) and not _diverged(group)


def _as_the_table_sorts(groups) -> list[dict[str, Any]]:
    """`groups` in comparison.md's order: a block per memory size when the runs span
    several (smallest first), and in it the ranked groups by mean final accuracy, best
    first, then those with a diverged run, then those without a final accuracy."""
    return sorted(groups, key=lambda g: (_mem_size(g), not _ranked(g), not g["final_average_accuracy"],
                                         -g["final_average_accuracy"]["mean"] if g["final_average_accuracy"] else 0.0))


def _mem_size(group: dict[str, Any]) -> int:
    """The group's memory size where it is an axis of the report, else 0."""
    return (group.get("axes") or {}).get("mem_size") or 0


def data_span(values: Sequence[float], pad: float = 0.15, label_room: float = 0.8,
              least_width: float = 0.01) -> tuple[float, float]:
    """x limits that zoom onto `values`: `pad` of their spread on either side, and
    `label_room` of it more on the right for the mean ± std labels. A spread under
    `least_width` counts as `least_width`, so that equal values still get an axis.

    Drawn from 0 to 1, accuracies of 0.958 and 0.975 looked the same and forgetting of 0.02
    was invisible; a zoomed axis shows the differences the table states."""
    lo, hi = min(values), max(values)
    width = max(hi - lo, least_width)
    return lo - pad * width, hi + (pad + label_room) * width


def _mean_and_std_ends(s: dict) -> tuple[float, float]:
    std = s["std"] or 0.0  # None for one seed
    return s["mean"] - std, s["mean"] + std


def plot_final(groups: list[dict[str, Any]], path: Path) -> None:
    """The table's answer at a glance: final accuracy on all classes per group, the mean
    (a bar-shaped mark with mean ± std as a line) and each seed's value as a dot, sorted as
    comparison.md (best on top, drawn darker and starred); average forgetting beside it,
    in the same rows. Each panel's axis spans its own data (`data_span`), not 0 to 1."""
    done = _as_the_table_sorts(g for g in groups if g["final_average_accuracy"])
    if not done:
        return
    labels = [plain_text(g["label"]) + (f" ({len(_diverged(g))} diverged)" if _diverged(g) else "") for g in done]
    starred = _ranked(done[0])  # a group with a diverged run is never the best
    if starred:
        labels[0] = f"★ {labels[0]}"
    rows = range(len(done))
    fig = _figure(8.0, 1.4 + 0.38 * len(done))
    accuracy_ax, forgetting_ax = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((accuracy_ax, "final_average_accuracy", "final accuracy on all classes"),
                           (forgetting_ax, "average_forgetting", "average forgetting (lower is better)")):
        shown = [v for g in done if g[key] for v in (*g[key]["values"], *_mean_and_std_ends(g[key]))]
        if not shown:
            ax.set_title(title)
            continue
        for row, g in zip(rows, done):
            s = g[key]
            if s is None:
                continue
            alpha = 0.95 if row == 0 and starred else 0.5
            ax.plot(_mean_and_std_ends(s), [row, row], color="C0", alpha=alpha, lw=2)  # mean ± std
            ax.plot([s["mean"]], [row], "|", color="C0", alpha=alpha, markersize=14, mew=3)  # the mean
            ax.plot(s["values"], [row] * len(s["values"]), "k.", markersize=5)  # each seed
            ax.annotate(_fmt(s, 3), (max(*_mean_and_std_ends(s), *s["values"]), row), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8)  # right of all
        ax.set(title=title, xlim=data_span(shown))
        ax.grid(axis="x", alpha=0.3)
    accuracy_ax.set_yticks(list(rows), labels)
    accuracy_ax.set_ylim(len(done) - 0.5, -0.5)  # the best first, as in the table
    fig.suptitle("After the last experience (mark: mean over seeds, line: ± std, labelled; dots: each seed;"
                 " axes zoomed to the data)", fontsize=9)
    save_figure(fig, path)


def plot_matrix(group: dict[str, Any], path: Path) -> None:
    """The accuracy matrix R[i][j] (mean over seeds) as an annotated heatmap."""
    matrix = group["accuracy_matrix"]
    rows, cols = len(matrix), len(matrix[0])
    fig = _figure(max(4.0, 1.6 + 0.62 * cols), max(2.4, 1.2 + 0.5 * rows))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = matrix[i][j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 else "black")  # viridis is dark below ~0.6
    ax.set_xticks(range(cols), [str(j) for j in range(cols)])
    ax.set_yticks(range(rows), ["all" if group["joint"] else str(i) for i in range(rows)])
    ax.set(xlabel="tested on experience j",
           ylabel="after training" if group["joint"] else "after training experience i")
    n = len(group["seeds"]["finished"])
    ax.set_title(plain_text(f"{group['label']}: accuracy ({'mean of ' + str(n) + ' seeds' if n > 1 else '1 seed'})"),
                 fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, path)


def to_pixels(images, mean: Sequence[float], std: Sequence[float]):
    """Images as display pixels in [0, 1]: uint8 images are pixels already (a uint8 memory),
    float ones are normalised and are denormalised with the data set's mean and std."""
    images = images.cpu()
    if images.dtype == torch.uint8:
        return images.float() / 255
    view = (1, -1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(view)
    std_t = torch.tensor(std, dtype=torch.float32).view(view)
    return (images.float() * std_t + mean_t).clamp(0, 1)  # (N, C, H, W)


def image_mosaic(pixels, labels, classes: Sequence[int] | None = None, max_cols: int = 10, max_rows: int = 20):
    """A grid of images, one row per class (in `classes` order, else sorted), at most
    `max_cols` images per row and `max_rows` rows.

    Args:
        pixels: (N, C, H, W) float tensor in [0, 1].
        labels: (N,) class of each image.

    Returns:
        The mosaic as an (H', W', C) float array in [0, 1], the classes of its rows, and
        each row's number of images before the column cap.
    """
    pixels, labels = pixels.numpy(), labels.cpu().numpy()
    present = set(labels.tolist())
    order = [int(c) for c in (classes if classes is not None else sorted(present))]
    rows = [c for c in order if c in present][:max_rows]
    _, channels, h, w = pixels.shape
    pad = 1  # a white line between images
    counts = [int((labels == c).sum()) for c in rows]
    cols = min(max_cols, max(counts, default=1))
    mosaic = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, channels), dtype=np.float32)
    for row, c in enumerate(rows):
        for col, image in enumerate(pixels[labels == c][:cols]):
            top, left = pad + row * (h + pad), pad + col * (w + pad)
            mosaic[top:top + h, left:left + w] = image.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    return mosaic, rows, counts


def plain_text(text: str) -> str:
    """`text` as matplotlib should show it: its `$` not read as math, and bytes that were
    not UTF-8 (a folder name decoded with surrogate escapes) as replacement characters."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("$", r"\$")


def save_image_grid(images, labels, mean: Sequence[float], std: Sequence[float], class_names: Sequence[str] | None,
                    path: Path, title: str | None = None, classes: Sequence[int] | None = None,
                    max_cols: int = 10, max_rows: int = 20) -> None:
    """Save images as a PNG grid, one row per class labelled "<class name> (<count>)".

    Args:
        images: (N, C, H, W), normalised float or uint8 pixels.
        labels: (N,) class indices.
        classes: row order (e.g. the order classes arrived in); default sorted.
    """
    mosaic, rows, counts = image_mosaic(to_pixels(images, mean, std), labels, classes, max_cols, max_rows)
    if not rows:
        raise CclError("no images to draw")
    names = list(class_names or [])
    row_h = mosaic.shape[0] / len(rows)
    fig = _figure(max(4.5, 2.2 + 0.55 * mosaic.shape[1] / row_h), 1.2 + 0.55 * len(rows))  # wide enough for the title
    ax = fig.add_subplot()
    gray = mosaic.shape[2] == 1
    ax.imshow(mosaic[:, :, 0] if gray else mosaic[:, :, :3], cmap="gray" if gray else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([(i + 0.5) * row_h for i in range(len(rows))],
                  [plain_text(f"{names[c] if c < len(names) else c} ({n})") for c, n in zip(rows, counts)])
    ax.set_xticks([])
    capped = [f"≤{max_cols} per class shown"] if max(counts) > max_cols else []
    if len(set(labels.tolist())) > max_rows:
        capped.append(f"first {max_rows} classes")
    subtitle = ", ".join([f"{len(labels)} images", *capped])
    ax.set_title(plain_text(f"{title}\n{subtitle}" if title else subtitle), fontsize=9)
    save_figure(fig, path)


def plot_memory(label: str, seed: int, memory: dict[str, Any], path: Path) -> None:
    """The final memory (a run's memory.pt) as an image grid, classes in arrival order."""
    save_image_grid(memory["images"], memory["labels"], memory["mean"], memory["std"], memory.get("class_names"),
                    path, title=f"{label}: final memory of seed {seed} ({memory.get('dtype', '?')})",
                    classes=memory.get("classes"))


def write_memory_picture(run_dir: Path) -> Path | None:
    """memory.png in a run folder that has a memory.pt: what the learner replays, by class."""
    run_dir = Path(run_dir)
    if not (run_dir / "memory.pt").exists():
        return None
    config = read_json(run_dir / "config.json", CONFIG_SHAPE)["run"]
    with folder_lock(run_dir, "drawing its memory"):  # as every writer of a run folder (remove_stale_temporaries)
        plot_memory(config["memory"], config["seed"], _load_memory(run_dir / "memory.pt"), run_dir / "memory.png")
    return run_dir / "memory.png"


def _load_memory(path: Path) -> dict[str, Any]:
    return load_torch(path, "memory file")


def write_figures(summary: dict[str, Any], by_label: dict[str, list[RunRecord]], out: Path) -> None:
    """final.png, accuracy.png, matrix-<memory>.png and memory-<memory>.png; a memory that cannot be
    drawn becomes a note, not a failed report."""
    groups = [g for g in summary["memories"] if g["average_accuracy"]]
    if groups:
        look = memory_looks(groups)
        plot_final(groups, out / "final.png")
        plot_accuracy(groups, out / "accuracy.png", look)
        summary["figures"] += ["final.png", "accuracy.png"]
        if plot_curve(groups, out / "curve.png", look):
            summary["figures"].append("curve.png")
    for g in groups:
        name = f"matrix-{slug(g['label'])}.png"
        plot_matrix(g, out / name)
        summary["figures"].append(name)
    for g in groups:
        first = next(r for r in by_label[g["label"]] if r.status == "finished")
        path = first.folder / "memory.pt"
        if not path.exists():
            continue  # none and joint keep no memory
        name = f"memory-{slug(g['label'])}.png"
        try:
            plot_memory(g["label"], first.seed, _load_memory(path), out / name)
        except (CclError, KeyError, ValueError, RuntimeError) as e:
            summary["notes"].append(f"{g['label']}: memory not drawn: {e}")
            continue
        summary["figures"].append(name)


# ---------------------------------------------------------------------------------------
# The report

def comparison_order(dirs: Sequence[Path]) -> list[str]:
    """Memory order from the comparisons' grid.json files (the order they were asked for)."""
    order: list[str] = []
    for d in dirs:
        grid = Path(d) / "grid.json"
        if grid.exists():
            order += [m for m in read_json(grid, GRID_SHAPE)["memories"] if m not in order]
    return order


def build_summary(dirs: Sequence[Path], out: Path) -> tuple[dict[str, Any], dict[str, list[RunRecord]]]:
    records = collect_runs(dirs)
    if not records:
        raise CclError(f"no run folders found in {', '.join(map(str, dirs))}")
    by_label = group_runs(records, comparison_order(dirs))
    summary = {"sources": [os.path.relpath(Path(d).resolve(), out.resolve()) for d in dirs],
               "settings": shared_settings(records),
               "memories": [summarise_group(label, runs, out.resolve()) for label, runs in by_label.items()],
               "figures": [], "notes": []}
    add_herding_equivalents(summary["memories"])
    return summary, by_label


def write_report(dirs: Sequence[Path], out: Path | None = None) -> dict[str, Any]:
    """Build comparison.md, comparison.json and the figures in `out` (default: the single
    folder given) from the saved runs under `dirs`; returns the summary."""
    dirs = [Path(d) for d in dirs]
    if out is None:
        if len(dirs) != 1:
            raise CclError("a report over several folders needs --out")
        if (dirs[0] / "config.json").exists():  # a run folder holds what the run wrote, nothing else
            raise CclError(f"{dirs[0]} is a run folder; give --out for the report (its memory is in "
                           f"{dirs[0] / 'memory.png'})")
        out = dirs[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary, by_label = build_summary(dirs, out)
    previous = _previous_figures(out)
    write_figures(summary, by_label, out)
    for name in previous - set(summary["figures"]):
        (out / name).unlink(missing_ok=True)  # a figure of a group that is gone would mislead
    write_json(out / "comparison.json", _finite(summary))
    write_text(out / "comparison.md", comparison_markdown(summary))
    return summary


def _previous_figures(out: Path) -> set[str]:
    """Figures an earlier report in `out` listed (only those are ever removed)."""
    try:
        figures = read_json(out / "comparison.json").get("figures", [])
    except (CclError, AttributeError):
        return set()
    return {f for f in figures if isinstance(f, str) and "/" not in f and f.endswith(".png")}


def _finite(value: Any) -> Any:
    """NaN (a metric Avalanche could not compute) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def table(summary: dict[str, Any]) -> str:
    """The comparison's tables alone (for the terminal), a blank line between them."""
    md = comparison_markdown({**summary, "figures": [], "notes": []})
    lines: list[str] = []
    for line, before in zip(md.splitlines(), ["", *md.splitlines()]):
        if line.startswith("|"):
            lines += ([""] if lines and not before.startswith("|") else []) + [line]
    return "\n".join(lines)
