"""Summaries of repeated measurements: min, median, 99th percentile and max."""

from __future__ import annotations

import math
import statistics
from typing import Any


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile; with fewer than 100 values the 99th percentile is the maximum."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


def summarize(values: list[float]) -> dict[str, Any]:
    """Return n, min, median, p99 and max of `values` (all None when there are none)."""
    if not values:
        return {"n": 0, "min": None, "median": None, "p99": None, "max": None}
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "p99": percentile(values, 0.99),
        "max": max(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
