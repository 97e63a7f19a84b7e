"""Rendering the suite's figures: a console table, docs/BENCHMARKS.md and a bar chart."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    """One measured figure for kq and each peer (a peer's entry is a number, or why it was not measured)."""

    workload: str
    metric: str  # "msg/s", "ms", "% of a core" or "MB"
    kq: float | None
    peers: dict[str, float | str] = field(default_factory=dict)
    higher_is_better: bool = True
    tenfold: bool = False  # the "at least 10x persist-queue, litequeue and diskcache" applies
    short: str = ""  # label on the chart

    def advantage(self, peer: float) -> float:
        """How many times better kq is than ``peer`` (above 1: kq is ahead)."""
        better, worse = (self.kq, peer) if self.higher_is_better else (peer, self.kq)
        if not worse:
            return 1.0 if not better else float("inf")
        return better / worse


@dataclass
class Check:
    target: str
    measured: str
    passed: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]


def figure(value: float | str | None, metric: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if metric == "msg/s":
        for scale, suffix in ((1e6, " M"), (1e3, " k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    if metric in ("ms", "ms/msg"):
        return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"
    if metric == "% of a core":
        return f"{value:.2f} %"
    if metric == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3g}"


def times(ratio: float) -> str:
    if ratio == float("inf"):
        return "∞"
    return f"{ratio:.2g}×" if ratio < 10 else f"{ratio:,.0f}×"


def peer_cell(row: Row, label: str) -> str:
    value = row.peers.get(label)
    if isinstance(value, float | int) and isinstance(row.kq, float | int):
        return f"{figure(value, row.metric)} (kq {times(row.advantage(value))})"
    return figure(value, row.metric)


def peer_checks(rows: list[Row], tenfold_peers: list[str]) -> list[Check]:
    """The issue's "ahead of every peer on every workload" and "at least 10x" targets, row by row."""
    checks = []
    for row in rows:
        measured = {label: v for label, v in row.peers.items() if isinstance(v, float | int)}
        if not isinstance(row.kq, float | int) or not measured:
            continue
        weakest = min(measured, key=lambda label: row.advantage(measured[label]))
        margin = row.advantage(measured[weakest])
        checks.append(
            Check(
                f"{row.workload}: ahead of every peer ({row.metric})",
                f"closest: {weakest}, kq {times(margin)}",
                margin > 1,
            )
        )
        tenfold = {label: v for label, v in measured.items() if label in tenfold_peers}
        if row.tenfold and tenfold:
            weakest = min(tenfold, key=lambda label: row.advantage(tenfold[label]))
            margin = row.advantage(tenfold[weakest])
            checks.append(
                Check(
                    f"{row.workload}: ≥ 10× persist-queue, litequeue, diskcache",
                    f"closest: {weakest}, kq {times(margin)}",
                    margin >= 10,
                )
            )
    return checks


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def results_table(rows: list[Row], peers: list[str]) -> list[str]:
    body = [
        [row.workload, row.metric, f"**{figure(row.kq, row.metric)}**", *(peer_cell(row, p) for p in peers)]
        for row in rows
    ]
    return _table(["workload", "metric", "kq", *peers], body)


def checks_table(checks: list[Check]) -> list[str]:
    return _table(["target", "measured", "verdict"], [[c.target, c.measured, f"**{c.verdict}**"] for c in checks])


def console(rows: list[Row], checks: list[Check], peers: list[str]) -> str:
    """Plain aligned text for the terminal: figures, then targets."""
    header = ["workload", "metric", "kq", *peers]
    body = [[row.workload, row.metric, figure(row.kq, row.metric), *(peer_cell(row, p) for p in peers)] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in [header, *body]]
    lines.append("")
    width = max((len(c.target) for c in checks), default=0)
    lines += [f"{c.verdict:<5} {c.target.ljust(width)}  {c.measured}" for c in checks]
    return "\n".join(lines)


def markdown(
    title: str,
    intro: list[str],
    machine: dict[str, str],
    rows: list[Row],
    checks: list[Check],
    peers: list[str],
    chart: str,
    method: list[str],
    not_measured: list[str],
) -> str:
    out = [f"# {title}", "", *intro, ""]
    out += ["## Machine", "", *_table(["", ""], [[k, v] for k, v in machine.items()]), ""]
    out += ["## Targets", "", *checks_table(checks), ""]
    out += [
        "## Results",
        "",
        "Each peer's cell says how many times better kq is (above 1×: kq is ahead).",
        "",
        *results_table(rows, peers),
        "",
        f"![msg/s per workload, log scale]({chart})",
        "",
    ]
    out += ["## Method", "", *(f"- {line}" for line in method), ""]
    out += ["## Not measured", "", *(f"- {line}" for line in not_measured), ""]
    return "\n".join(out)


def chart(rows: list[Row], peers: list[str], path: Path, title: str) -> None:
    """Grouped bars of msg/s, log scale: one group per workload, one bar per system.

    A per-message time (workload 4) is shown as its rate, 1000 / ms.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rate(value, metric: str):
        if not isinstance(value, float | int) or value <= 0:
            return None
        return 1000 / value if metric == "ms/msg" else value

    rows = [r for r in rows if r.metric in ("msg/s", "ms/msg") and rate(r.kq, r.metric)]
    systems = ["kq", *peers]
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f"]
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for i, system in enumerate(systems):
        values = [rate(r.kq if system == "kq" else r.peers.get(system), r.metric) for r in rows]
        xs = [n + (i - (len(systems) - 1) / 2) * width for n in range(len(rows))]
        heights = [v or 0 for v in values]
        bars = ax.bar(xs, heights, width, label=system, color=colours[i % len(colours)])
        if system == "kq":
            for bar, value in zip(bars, heights):
                ax.annotate(
                    figure(value, "msg/s"),
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    fontweight="bold",
                )
        for x, value in zip(xs, values):
            if value is None:
                ax.annotate("n/a", (x, 1), ha="center", va="bottom", fontsize=7, rotation=90, color="grey")
    ax.set_yscale("log")
    ax.set_ylim(bottom=1)
    ax.set_ylabel("messages per second (log scale)")
    ax.set_xticks(range(len(rows)), [r.short or r.workload for r in rows])
    ax.set_title(title)
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(ncols=3, fontsize=9, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
