"""Where the shipped `scenarios/` and `configs/` folders are, and the run presets in them.

In a source checkout they sit beside the package; a `pip install .` copies them into
it as `ccl/scenarios` and `ccl/configs` (see pyproject.toml), so both layouts work.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from ccl.errors import CclError

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """Folder of shipped `kind` files ("scenarios" or "configs")."""
    for folder in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"the {kind}/ folder is missing from the installation ({_PACKAGE})")


def run_presets() -> dict[str, Path]:
    """The shipped run presets (configs/runs/*.toml) by name."""
    return {p.stem: p for p in sorted((resource_dir("configs") / "runs").glob("*.toml"))}


def run_preset(given: str | Path) -> Path:
    """The file `--config` names: `given` where such a file exists (a path wins), else the
    shipped run preset of that name (`cpu-quick`, or `cpu-quick.toml`), so that a preset
    works from any folder; else a CclError naming the closest preset."""
    path = Path(given)
    if path.exists():
        return path
    presets = run_presets()
    name = path.name.removesuffix(".toml")
    if path.parent == Path(".") and name in presets:
        return presets[name]
    close = difflib.get_close_matches(name, list(presets), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; the run presets: {', '.join(presets)}"
    raise CclError(f"--config {given}: no such file, nor a run preset of that name{hint}")
