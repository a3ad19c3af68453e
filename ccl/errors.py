"""The one exception type the CLI turns into a one-line message and a non-zero exit."""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class CclError(Exception):
    """A problem the user can fix (bad input, missing data); shown without a traceback."""


def closest(name: Any, names: Iterable[str]) -> str | None:
    """The known name `name` most likely misspells (difflib's ratio at least 0.6), or None."""
    found = difflib.get_close_matches(str(name), list(names), n=1)
    return found[0] if found else None


def unknown_name(kind: str, name: Any, names: Iterable[str]) -> CclError:
    """The error for a name of `kind` that is none of `names`: the closest one first (a typo
    is the usual cause), then all of them, so the message ends as it always has."""
    names = list(names)
    guess = closest(name, names)
    hint = f" (did you mean {guess}?)" if guess is not None else ""
    return CclError(f"unknown {kind} {name!r}{hint}; choose one of: {', '.join(names)}")
