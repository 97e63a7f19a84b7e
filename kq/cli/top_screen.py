"""How ``kq top`` draws a frame: rich tables sized to the terminal, or plain text for a pipe.

Only the rows that fit are drawn: a directory of a thousand topics costs
one screenful of cells a second, not a thousand rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ops.top import Frame, GroupRow, TopicRow
from .output import human

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 20


def sparkline(values: list[int | None]) -> str:
    """Values as block characters scaled from 0 to their largest (a space where there is none)."""
    top = max((v for v in values if v is not None), default=0)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif top <= 0 or v <= 0:
            out.append(SPARK_BLOCKS[0])
        else:
            out.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, 1 + int(v * (len(SPARK_BLOCKS) - 1) / (top + 1)))])
    return "".join(out)


def rate_text(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate >= 10_000:
        return f"{rate / 1000:,.0f}k"
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def duration_text(seconds: float | None) -> str:
    """A time to catch up as people read it: 0s, 45s, 3m20s, 2h05m; never; - while not known."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "never"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 100 * 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d"


STATUS_STYLES = {"ok": "green", "falling behind": "yellow", "stalled": "bold red", "stopped": "red"}


@dataclass
class ViewState:
    """What the viewer chose: the sort, the filter, and the filter being typed after '/'."""

    sort: str = "lag"
    filter: str = ""
    editing: str | None = None  # the filter being typed, while the prompt is open


TOPIC_COLUMNS = ["topic", "partitions", "records", "in/s", "size"]
GROUP_COLUMNS = ["group", "topic", "members", "lag", "out/s", "catch-up", "status", "lag history"]
SHARE_COLUMNS = [
    "share group",
    "topic",
    "members",
    "acquired",
    "retrying",
    "dead",
    "lag",
    "out/s",
    "catch-up",
    "status",
    "lag history",
]


def _topic_cells(t: TopicRow) -> list[str]:
    return [
        t.topic,
        str(t.partitions),
        f"{t.records:,}",
        rate_text(t.rate_in),
        "-" if t.bytes is None else human(t.bytes),
    ]


def _group_cells(g: GroupRow, share: bool, history: Callable[[GroupRow], list]) -> list:
    from rich.text import Text

    counts = [f"{g.acquired or 0:,}", f"{g.retrying or 0:,}", f"{g.dead_lettered or 0:,}"] if share else []
    return [
        g.group,
        g.topic,
        str(g.members),
        *counts,
        f"{g.lag:,}",
        rate_text(g.rate_out),
        duration_text(g.catch_up),
        Text(g.status, style=STATUS_STYLES.get(g.status.casefold(), "")),
        Text(sparkline(history(g)), style="cyan"),
    ]


def _shares_of(space: int, wants: list[int]) -> list[int]:
    """Rows for each section out of ``space``: every section gets what it wants if it all fits, else
    the space goes round one row at a time, so that no section is crowded out by a long one."""
    given = [0] * len(wants)
    while space > 0 and any(g < w for g, w in zip(given, wants)):
        for i, w in enumerate(wants):
            if space > 0 and given[i] < w:
                given[i] += 1
                space -= 1
    return given


def render(frame: Frame, view: ViewState, width: int, height: int, history: Callable[[GroupRow], list]):
    """The frame as a rich renderable that fits ``height`` lines; ``history``: a group row's lag
    over the last minutes, in slices (kq.ops.top.Top.lag_history)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    # What the viewer chose comes first: a long directory path is what gets cut at the edge.
    header = Text.assemble(
        ("kq top", "bold"),
        f"   {time.strftime('%H:%M:%S', time.localtime(frame.taken_at))}   sort: ",
        (view.sort, "bold"),
        *(("   filter: ", (view.filter, "bold")) if view.filter else ()),
        f"   {frame.source}",
        *(((f"   {len(frame.problems)} unreadable: {frame.problems[0]}", "red"),) if frame.problems else ()),
    )
    header.truncate(width)
    if view.editing is not None:
        footer = Text.assemble(
            ("filter: ", "bold"), view.editing, ("█", "blink"), ("   enter: apply  esc: clear", "dim")
        )
    else:
        footer = Text(
            "q quit   s sort (lag, rate, name)   l lag   r rate   n name   / filter   esc clear filter", style="dim"
        )
    footer.truncate(width)
    sections: list[tuple[str, list[str], list, Callable[[Any], list]]] = [
        ("topics", TOPIC_COLUMNS, frame.topics, _topic_cells),
        ("consumer groups", GROUP_COLUMNS, frame.groups, lambda g: _group_cells(g, False, history)),
        ("share groups", SHARE_COLUMNS, frame.shares, lambda g: _group_cells(g, True, history)),
    ]
    shown = [s for s in sections if s[2] or s[0] != "share groups"]  # no empty share section
    # Each section costs a title, a header and a rule; the screen has the header and footer lines too.
    space = max(0, height - 2 - 3 * len(shown))
    counts = _shares_of(space, [len(rows) for _, _, rows, _ in shown])
    parts: list = [header]
    for (title, columns, rows, cells_of), count in zip(shown, counts):
        more = f", {len(rows) - count:,} not shown" if count < len(rows) else ""
        table = Table(
            title=f"{title} ({len(rows):,}{more})",
            title_justify="left",
            title_style="bold",
            box=box.SIMPLE_HEAD,
            padding=(0, 1, 0, 0),  # two spaces between columns, with the box's own
            pad_edge=False,
            show_edge=False,
            expand=False,
        )
        for c in columns:
            numeric = c not in ("topic", "group", "share group", "status", "lag history")
            table.add_column(c, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis")
        for row in rows[:count]:  # only what fits is formatted
            table.add_row(*cells_of(row))
        parts.append(table)
    parts.append(footer)
    return Group(*parts)


def plain_text(frame: Frame) -> str:
    """The frame as tab-separated tables, one after another with a blank line between (for a pipe)."""

    def number(value, digits: int = 1) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return "inf" if math.isinf(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["\t".join(["topic", "partitions", "records", "in/s", "bytes"])]
    for t in frame.topics:
        lines.append("\t".join([t.topic, str(t.partitions), str(t.records), number(t.rate_in), number(t.bytes)]))
    lines += ["", "\t".join(["group", "topic", "members", "lag", "out/s", "catch_up_s", "status"])]
    for g in frame.groups:
        cells = [g.group, g.topic, str(g.members), str(g.lag), number(g.rate_out), number(g.catch_up, 0), g.status]
        lines.append("\t".join(cells))
    if frame.shares:
        lines += [
            "",
            "\t".join(
                [
                    "share_group",
                    "topic",
                    "members",
                    "acquired",
                    "retrying",
                    "dead_lettered",
                    "lag",
                    "out/s",
                    "catch_up_s",
                    "status",
                ]
            ),
        ]
        for g in frame.shares:
            cells = [
                g.group,
                g.topic,
                str(g.members),
                number(g.acquired),
                number(g.retrying),
                number(g.dead_lettered),
                str(g.lag),
                number(g.rate_out),
                number(g.catch_up, 0),
                g.status,
            ]
            lines.append("\t".join(cells))
    return "\n".join(lines)
