"""Durations as people read estimates: one formatter for the run's bar and estimate line
and for a condensation's cost line."""
from __future__ import annotations


def duration(seconds: float, compact: bool = False) -> str:
    """0.25 s, 4.5 s, 45 s, 8 min, 1 h 12 min (compact: 0.25s, 45s, 8m, 1h12m): as precise
    as an estimate is; under 10 s two significant digits, since a condensation iteration's
    time is often a fraction of a second."""
    seconds = max(0.0, seconds)
    s, m, h = ("s", "m", "h") if compact else (" s", " min", " h ")
    if seconds < 10:
        return f"{seconds:.2g}{s}"
    if seconds < 90:
        return f"{seconds:.0f}{s}"
    minutes = round(seconds / 60)
    return f"{minutes}{m}" if minutes < 60 else f"{minutes // 60}{h}{minutes % 60}{m}"
