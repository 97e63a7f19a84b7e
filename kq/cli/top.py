"""``kq top``: topics, consumer groups and share groups, live, with their rates and lag."""

from __future__ import annotations

from typing import Optional

import typer

from .common import KqCommand, duration_seconds, json_option, settings

app = typer.Typer(add_completion=False)

SORT_KEYS = {"l": "lag", "r": "rate", "n": "name"}


@app.command("top", cls=KqCommand)
def top(
    ctx: typer.Context,
    interval: float = typer.Option(
        "1s",
        "--interval",
        "-i",
        metavar="DURATION",
        parser=duration_seconds,
        help="Take a sample this often (1s, 500ms, 5s).",
    ),
    once: bool = typer.Option(
        False,
        "--once",
        help="Print one frame and exit (two samples one --interval apart, for the rates); "
        "in a pipe, tab-separated tables.",
    ),
    sort: str = typer.Option(
        "lag",
        "--sort",
        metavar="KEY",
        help="Largest lag first (lag), fastest first (rate: records/s in or out), or by name (name).",
    ),
    filter_text: Optional[str] = typer.Option(
        None, "--filter", metavar="TEXT", help="Only topics and groups whose name holds TEXT (any case)."
    ),
    history: float = typer.Option(
        "2m",
        "--history",
        metavar="DURATION",
        parser=duration_seconds,
        help="How far back each lag's sparkline goes.",
    ),
    stalled_after: Optional[float] = typer.Option(
        None,
        "--stalled-after",
        metavar="DURATION",
        parser=duration_seconds,
        help="A group whose committed offset has not moved for this long while it has lag is stalled "
        "(stopped, without members) \\[default: 5m].",
        show_default=False,
    ),
    json_output: bool = json_option(
        "A JSON object per sample: source, taken_at, topics, groups, share_groups (with rate_in, rate_out, "
        "catch_up in seconds, status); one line each, or one object with --once."
    ),
) -> None:
    """Watch topics, consumer groups and share groups live: records/s in and out, lag, time to catch up.

    Per topic: partitions, records held, records/s appended, bytes on disk.
    Per consumer group and share group on a topic: live members, lag,
    records/s committed (out), the time it takes to reach the end at the
    current rates, a status (OK, falling behind, stalled: offsets not moving
    while lag grows, stopped: the same with no members) and a sparkline of
    the lag over the last --history. Rates are over the last 10 s.

    Keys: [bold]s[/bold] next sort; [bold]l[/bold], [bold]r[/bold], [bold]n[/bold] sort by lag, rate, name;
    [bold]/[/bold] filter by name (enter applies, esc clears); [bold]q[/bold] or Ctrl-C quits.

    [bold]Examples[/bold]

      kq top

      kq top --filter billing --sort rate

      kq -b localhost:9092 top --interval 5s

      kq top --once | column -t            [dim]# one frame as plain tables[/dim]

      kq top --once --json | jq '.groups[] | select(.lag > 1000) | .group'
    """
    import gc

    from ..errors import UsageError
    from ..ops.observe import DEFAULT_STALL_AFTER
    from ..ops.top import SORTS, Top
    from .output import is_terminal
    from .top_screen import ViewState

    if interval <= 0:
        raise UsageError("--interval must be more than 0")
    if history <= 0:
        raise UsageError("--history must be more than 0")
    if stalled_after is not None and stalled_after <= 0:
        raise UsageError("--stalled-after must be more than 0")
    if sort not in SORTS:
        raise UsageError(f"--sort must be one of {', '.join(SORTS)}, not {sort!r}")
    # Each sample makes objects by the ten thousand that live until the next one (a large
    # directory's states). Collected every 700 allocations, they were walked again and again: a
    # quarter of kq top's CPU time (benchmarks/top.py). Refcounting frees them; look less often.
    gc.set_threshold(20_000, 10, 10)
    view = ViewState(sort=sort, filter=filter_text or "")
    sampler = Top(settings(ctx).backend, history_span=history, stall_after=stalled_after or DEFAULT_STALL_AFTER)
    if once:
        sampler.sample()
        import time

        time.sleep(interval)
        _print_frame(sampler, sampler.sample(), view, json_output, is_terminal())
    elif json_output or not is_terminal():
        _print_frames(sampler, view, interval, json_output)
    else:
        _live(sampler, view, interval)


def _print_frame(sampler, frame, view, json_output: bool, terminal: bool) -> None:
    from ..ops.top import arrange
    from .top_screen import plain_text, render

    frame = arrange(frame, view.sort, view.filter)
    if json_output:
        import json

        print(json.dumps(frame.as_json(), indent=2 if terminal else None), flush=True)
    elif terminal:
        from rich.console import Console

        console = Console()
        console.print(render(frame, view, console.size.width, 10**6, sampler.lag_history))
    else:
        print(plain_text(frame), flush=True)


def _print_frames(sampler, view, interval: float, json_output: bool) -> None:
    """Frame after frame into a pipe, until interrupted (SIGINT, SIGTERM or the reader leaving: exit 0)."""
    import time

    next_at = time.monotonic()
    try:
        while True:
            frame = sampler.sample()
            if not json_output:
                print(flush=False)  # a blank line between frames
            _print_frame(sampler, frame, view, json_output, False)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except KeyboardInterrupt:
        return


def _live(sampler, view, interval: float) -> None:
    import time

    from rich.console import Console
    from rich.live import Live

    from ..ops.top import SORTS, arrange
    from .keys import Keyboard
    from .top_screen import render

    console = Console()
    frame = sampler.sample()
    next_at = time.monotonic() + interval
    try:
        with Keyboard() as keyboard, Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                size = console.size
                shown = arrange(frame, view.sort, view.filter)
                live.update(render(shown, view, size.width, size.height, sampler.lag_history), refresh=True)
                keys = keyboard.read(next_at - time.monotonic())
                for key in keys:
                    if _handle_key(key, view, SORTS):
                        return
                if time.monotonic() >= next_at:
                    frame = sampler.sample()
                    next_at = max(next_at + interval, time.monotonic())
    except KeyboardInterrupt:
        return  # Ctrl-C or SIGTERM ends a live view as q does: exit 0, the terminal put back


def _handle_key(key: str, view, sorts) -> bool:
    """Apply one key to the view; True when it asks to quit."""
    if view.editing is not None:  # typing a filter after '/'
        if key == "enter":
            view.filter, view.editing = view.editing, None
        elif key == "escape":
            view.editing = None
        elif key == "backspace":
            view.editing = view.editing[:-1]
        elif len(key) == 1 and key.isprintable():
            view.editing += key
        return False
    if key in ("q", "Q"):
        return True
    if key == "/":
        view.editing = view.filter
    elif key == "escape":
        view.filter = ""
    elif key == "s":
        view.sort = sorts[(sorts.index(view.sort) + 1) % len(sorts)]
    elif key in SORT_KEYS:
        view.sort = SORT_KEYS[key]
    return False
