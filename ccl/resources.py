"""Where the shipped `scenarios/` and `configs/` folders are.

In a source checkout they sit beside the package; a `pip install .` copies them into
it as `ccl/scenarios` and `ccl/configs` (see pyproject.toml), so both layouts work.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(kind: str) -> Path:
    """Folder of shipped `kind` files ("scenarios" or "configs")."""
    for folder in (_PACKAGE / kind, _PACKAGE.parent / kind):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"the {kind}/ folder is missing from the installation ({_PACKAGE})")
