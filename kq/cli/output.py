"""How commands show results: JSON for scripts, rich tables on a terminal, tab-separated text in pipes.

(Records themselves are written by kq.formats.)
"""

import os
import sys
from typing import Any

from ..errors import KqError


def explain(exc: KqError) -> str:
    """An error's message, and what the library cannot say (it names no flags): which command or option helps."""
    from ..errors import CorruptLog, Diverged

    if isinstance(exc, Diverged):
        return f"{exc}; rerun with --truncate to cut the replica back to offset {exc.offset} and copy from there"
    if isinstance(exc, CorruptLog):
        return f"{exc} (`kq verify` lists the damage; `kq verify --repair` moves it aside)"
    return str(exc)


def error_text(exc: BaseException) -> str:
    """An error as one line: a KqError's message (with its hint), an OSError's reason and file."""
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        if exc.filename2:  # a rename names both ends: either may be the cause
            where += f" -> {exc.filename2}"
        return f"{exc.strerror or exc}{where}"
    return explain(exc) if isinstance(exc, KqError) else str(exc)


def warn(message: str) -> None:
    print(f"kq: warning: {message}", file=sys.stderr, flush=True)


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def print_json(obj) -> None:
    import json

    print(json.dumps(obj, indent=2 if is_terminal() else None))


def rich_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print(f"{title}: none", style="dim")
        return
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        # Numbers (and sizes such as 1.2 MiB) line up on the right, words on the left.
        cells = [r[i] for r in rows if r[i] is not None and r[i] != ""]
        table.add_column(c, justify="right" if cells and all(map(looks_numeric, cells)) else "left")
    for r in rows:
        table.add_row(*[("" if v is None else str(v)) for v in r])
    console.print(table)


def looks_numeric(value) -> bool:
    import re

    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or bool(re.fullmatch(r"-?[\d,.]+(?: [KMGT]?i?B)?", str(value)))


def emit_rows(rows: list[dict], columns: list[str], json_output: bool, title: str) -> None:
    """Rows as JSON (scripts), a rich table (terminal) or tab-separated text (pipes)."""
    if json_output:
        print_json(rows)
    elif is_terminal():
        rich_table(title, columns, [[r.get(c) for c in columns] for r in rows])
    else:
        print("\t".join(columns))
        for r in rows:
            print("\t".join("-" if r.get(c) is None else str(r.get(c)) for c in columns))


def human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    scaled = size / 1024
    for unit in ("KiB", "MiB"):
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
        scaled /= 1024
    return f"{scaled:.1f} GiB"


def utc_time(ms: int | None) -> str | None:
    """Epoch ms as ISO-8601 UTC to the second (2026-12-07T09:00:00Z), as --at takes it."""
    if ms is None:
        return None
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# The largest unit that divides a setting exactly names it (7d, not 1w; 1536M, not 1.5G).
_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
_SIZE_UNITS = (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024))


def setting_text(name: str, value, for_people: bool) -> str:
    """A topic setting as `topic create` takes it: none, true/false, and (for people) 64M or 7d."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if for_people and isinstance(value, int) and value > 0:
        units = _DURATION_UNITS if name.endswith("_ms") else _SIZE_UNITS if name.endswith("_bytes") else ()
        for suffix, unit in units:
            if value % unit == 0:
                return f"{value // unit}{suffix}"
    return str(value)


def noting_written(exc: BaseException, written: int, bad_line: int | None) -> KqError:
    """The error that stopped a produce, saying how much was appended before it (for a rerun)."""
    if bad_line is not None:
        note = (
            f"{count(written, 'record')} from the lines before it {'was' if written == 1 else 'were'} written"
            if written
            else "nothing was written"
        )
    else:
        note = (
            f"{count(written, 'record')} {'was' if written == 1 else 'were'} written before the error"
            if written
            else "nothing was written"
        )
    if isinstance(exc, KqError):
        exc.args = (f"{exc}; {note}",)
        return exc
    filename = getattr(exc, "filename", None)
    where = f": {filename}" if filename else ""
    return KqError(f"{getattr(exc, 'strerror', None) or exc}{where}; {note}")


def quiet_stdout() -> None:
    """After a broken pipe, send further output to /dev/null so exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class ProgressBars:
    """Rich progress bars on stderr, one per task, for work of more than a few MB.

    Only on a terminal (never into a pipe or a log), and not with -q or --json.
    """

    THRESHOLD = 16 * 1024 * 1024

    def __init__(self, quiet: bool, json_output: bool = False):
        self.enabled = not (quiet or json_output) and is_terminal(sys.stderr)
        self.bar: Any = None  # a rich Progress, made at the first update that shows
        self.tasks: dict = {}

    def __enter__(self) -> "ProgressBars":
        return self

    def update(self, key, completed: int, total: int | None, records: int) -> None:
        """``total`` None: the end is not known (a copy from a cluster); shown once past THRESHOLD."""
        if not self.enabled or (completed if total is None else total) < self.THRESHOLD:
            return
        if self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("{task.fields[records]:,} msgs"),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(str(key), total=total, records=0)
        self.bar.update(self.tasks[key], completed=completed, records=records)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
