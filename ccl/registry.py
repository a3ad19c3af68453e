"""Name -> factory registries for scenarios' data sets and memories.

The runner builds from these. The CLI answers names, `ccl list` and misspellings from
ccl.names, their plain-data copy that loads no torch: a new entry needs its line there
too (tests/test_shipped_files.py fails until it has one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from ccl.errors import unknown_name

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    description: str
    value: T


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator: `@registry.register("name", "one line")` on a function or class."""
        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, description, value)
            return value
        return add

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise unknown_name(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())
