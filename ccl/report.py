"""Human-readable views of run results (tables now; comparison reports build on these)."""
from __future__ import annotations

from pathlib import Path

from ccl.io import read_json


def summary_table(run_dir: Path) -> str:
    """Per-experience table of one run, and its final figures."""
    r = read_json(Path(run_dir) / "results.json")
    lines = ["exp  classes   seen acc  all acc  forgetting  train s  memory s",
             "---  --------  --------  -------  ----------  -------  --------"]
    groups = r["experience_classes"] if len(r["accuracy_matrix"]) > 1 else [sum(r["experience_classes"], [])]
    for i, classes in enumerate(groups):
        lines.append(f"{i:>3}  {','.join(map(str, classes)):<8}  {r['seen_accuracy'][i]:>8.3f}  "
                     f"{r['average_accuracy'][i]:>7.3f}  {r['forgetting'][i]:>10.3f}  "
                     f"{r['train_seconds'][i]:>7.1f}  {r['memory_update_seconds'][i]:>8.1f}")
    m = r["memory_size"]
    lines.append(f"final average accuracy {r['final_average_accuracy']:.4f}, average forgetting "
                 f"{r['average_forgetting']:.4f}, BWT {r['final_bwt']:.4f}; memory {m['images']} images "
                 f"({m['bytes'] / 1024:.0f} KiB); {r['total_seconds']:.0f} s, peak RAM {r['peak_ram_mib']:.0f} MiB")
    return "\n".join(lines)
