"""The ``kq`` command: parse arguments, call a backend, format the output.

No storage logic lives here (the library does it: ``import kq``), and only
this package imports typer and rich. ``main`` maps every error to one
``kq: error: …`` line and an exit code (README, "Exit codes").
"""

import os
import sys

_signal_received: list = [None]  # the signal that interrupted this run, if one did


def _interrupted(signum, frame) -> None:
    _signal_received[0] = signum
    raise KeyboardInterrupt


def _print_warnings() -> None:
    """Show the library's KqWarnings as ``kq: warning: …`` lines, every time they happen."""
    import warnings

    from ..errors import KqWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, KqWarning):
            print(f"kq: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.simplefilter("always", KqWarning)
    warnings.showwarning = show


def _error(message: str, code: int) -> int:
    print(f"kq: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> None:
    import signal

    import typer
    from typer._click import exceptions as click_exc

    from ..errors import EXIT_USAGE, KqError
    from .app import app
    from .common import OutputClosed
    from .output import error_text, explain, quiet_stdout

    # SIGTERM ends kq the way SIGINT does: a follow exits 0, anything else
    # stops cleanly and exits 128 + the signal's number.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    _print_warnings()
    command = typer.main.get_command(app)
    from .completion import use_kq_show_completion

    use_kq_show_completion(command, sys.argv[1:] if argv is None else argv)
    if "_KQ_COMPLETE" in os.environ:
        from .completion import use_kq_completion

        use_kq_completion()  # after get_command, which registers typer's own completion classes
    try:
        code = command.main(args=argv, prog_name="kq", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130 and _signal_received[0] is not None:  # typer's answer to KeyboardInterrupt
            code = 128 + _signal_received[0]
    except click_exc.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f"\nTry '{exc.ctx.command_path} --help' for help."
        code = _error(exc.format_message() + hint, EXIT_USAGE)
    except click_exc.ClickException as exc:
        code = _error(exc.format_message(), exc.exit_code)
    except KqError as exc:
        code = _error(explain(exc), exc.exit_code)
    except (BrokenPipeError, OutputClosed):
        quiet_stdout()
        code = 0
    except KeyboardInterrupt:
        code = 128 + (_signal_received[0] or 2)
    except OSError as exc:
        code = _error(error_text(exc), 1)
    except (typer.Abort, EOFError):
        code = 128 + (_signal_received[0] or 2)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    sys.exit(code)
