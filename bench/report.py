"""The results table: one row per measurement, hermesd beside each peer, with hermesd/peer ratios."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bench.peers import LABELS, SUPERVISOR_KEYS
from bench.stats import ratio

# A cell shows the median with its spread: min-max for fewer values than this, p99 from here on.
PERCENTILE_FROM = 20


@dataclass
class Row:
    """One line of the table: a value per supervisor key, each a summary dict or a plain number."""

    name: str
    unit: str
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def center(self, key: str) -> float | None:
        value = self.values.get(key)
        if isinstance(value, dict):
            return value.get("median")
        return value

    def ratios(self) -> dict[str, float | None]:
        return {key: ratio(self.center("hermesd"), self.center(key)) for key in SUPERVISOR_KEYS[1:]}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "values": self.values, "ratios": self.ratios(),
                "note": self.note}


def format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "fds":
        return f"{value:.0f}"
    return f"{value:.3g} {unit}".strip()


def format_cell(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if not isinstance(value, dict):
        return format_number(value, unit)
    if value.get("median") is None:
        return "-"
    median = format_number(value["median"], unit)
    if "n" not in value:
        return median + (f" (max {format_number(value['max'], unit)})" if "max" in value else "")
    if value["n"] >= PERCENTILE_FROM:
        return f"{median}, p99 {format_number(value['p99'], unit)}"
    if value["n"] == 1:
        return median
    return f"{median} ({format_number(value['min'], unit)}-{format_number(value['max'], unit)})"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def build_rows(sections: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    startup = sections.get("startup") or {}
    for size in startup.get("sizes") or []:
        by_key = size["supervisors"]
        count = size["profiles"]
        rows.append(Row(f"Start-up, {count} profiles: to every gateway's `started` line", "s",
                        {key: data["ready"] for key, data in by_key.items()}))
        rows.append(Row(f"Start-up, {count} profiles: to the supervisor's own ready", "s",
                        {key: data["own_ready"] for key, data in by_key.items()},
                        "hermesd: `up --detach` returns; supervisord: all RUNNING; circus: all active"))
        if any(data["stop"]["n"] for data in by_key.values()):
            rows.append(Row(f"Stop, {count} profiles: graceful stop until every process exited", "s",
                            {key: data["stop"] for key, data in by_key.items()}))

    status = sections.get("status") or {}
    for config in status.get("configs") or []:
        rows.append(Row(f"Status call, {config['profiles']} profiles, {config['boards']} boards", "s",
                        {key: data["seconds"] for key, data in config["supervisors"].items()}))

    idle = sections.get("idle") or {}
    for config in idle.get("configs") or []:
        supervisors = config["supervisors"]
        window = config["window_seconds"]
        rows.append(Row(f"Idle CPU of the supervisor, {config['profiles']} profiles, {window:g} s", "s",
                        {key: data["cpu_seconds"] for key, data in supervisors.items()}))
        rows.append(Row(f"Idle resident memory of the supervisor, {config['profiles']} profiles", "MB",
                        {key: data["rss_mb"] for key, data in supervisors.items()}))

    fds = sections.get("fds") or {}
    if "hermesd" in fds:
        every = fds["every_gateway_measured"]["board_fds"]
        rows.append(Row(f"Board fds, {fds['profiles']} profiles, {fds['boards']} boards", "fds",
                        {"hermesd": fds["hermesd"]["board_fds"], "supervisord-startsecs1": every,
                         "supervisord-startsecs0": every, "circus": every},
                        f"peers: every gateway opens every board, measured {every}, "
                        f"computed {fds['every_gateway_computed']}"))
    return rows


def text_table(rows: list[Row], markdown: bool = False) -> str:
    header = ["Measurement"] + [LABELS[key] for key in SUPERVISOR_KEYS] + [
        f"hermesd/{LABELS[key]}" for key in SUPERVISOR_KEYS[1:]]
    lines = [[row.name] + [format_cell(row.values.get(key), row.unit) for key in SUPERVISOR_KEYS]
             + [format_ratio(value) for value in row.ratios().values()] for row in rows]
    if markdown:
        output = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        output += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(output)
    widths = [max(len(line[index]) for line in [header, *lines]) for index in range(len(header))]
    output = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
              for line in [header, *lines]]
    output.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(output)


def other_results(sections: dict[str, Any], names: list[str]) -> str:
    """Plain lines for the measurements that other modules return in their own shape."""
    lines = []
    for name in names:
        section = sections.get(name)
        if section is None:
            continue
        if section.get("error"):
            lines.append(f"{name}: error: {section['error']}")
        elif section.get("skipped"):
            lines.append(f"{name}: skipped: {section['skipped']}")
        else:
            lines.append(f"{name}: {json.dumps(section.get('result'), default=str, sort_keys=True)}")
    return "\n".join(lines)
