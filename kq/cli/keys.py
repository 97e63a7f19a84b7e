"""Keys pressed at the terminal, one at a time, for full-screen commands (``kq top``).

The terminal is put in cbreak mode (each key arrives as it is pressed, not
echoed; Ctrl-C still interrupts) with the standard library's termios and tty,
and put back as it was on the way out, however that is (q, Ctrl-C, SIGTERM,
an error).
"""

from __future__ import annotations

import os
import select
import sys

# The escape sequences of the keys a full-screen view uses, as xterm and tmux send them.
_SEQUENCES = {
    "\x1b[A": "up",
    "\x1b[B": "down",
    "\x1b[C": "right",
    "\x1b[D": "left",
    "\x1bOA": "up",
    "\x1bOB": "down",
    "\x1bOC": "right",
    "\x1bOD": "left",
}
_NAMES = {"\r": "enter", "\n": "enter", "\x7f": "backspace", "\x08": "backspace", "\x1b": "escape", "\t": "tab"}


def split_keys(text: str) -> list[str]:
    """What one read from the terminal holds, as keys: characters, or names for the others
    ("enter", "escape", "backspace", "up", ...; an unknown escape sequence is dropped whole)."""
    keys = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b" and i + 1 < len(text) and text[i + 1] in "[O":
            end = i + 2
            while end < len(text) and not ("@" <= text[end] <= "~"):
                end += 1  # parameters of a CSI sequence (digits, ';') up to its final byte
            sequence = text[i : end + 1]
            name = _SEQUENCES.get(sequence)
            if name:
                keys.append(name)
            i = end + 1
            continue
        keys.append(_NAMES.get(text[i], text[i]))
        i += 1
    return keys


class Keyboard:
    """The controlling terminal's keys in cbreak mode, while the ``with`` block runs.

    On a stdin that is not a terminal there are no keys: ``read`` only waits.
    """

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdin
        self.fd: int | None = None
        self._saved = None

    def __enter__(self) -> Keyboard:
        import termios
        import tty

        try:
            fd = self.stream.fileno()
            if os.isatty(fd):
                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd, termios.TCSANOW)
                self.fd = fd
        except (AttributeError, ValueError, OSError):
            self.fd = None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self.fd = None

    def read(self, timeout: float) -> list[str]:
        """The keys pressed within ``timeout`` seconds (as soon as there is one), else []."""
        import time

        timeout = max(0.0, timeout)
        if self.fd is None:
            time.sleep(timeout)
            return []
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        data = os.read(self.fd, 1024)
        if not data:  # the terminal went away: nothing more will come
            self.fd = None
            return []
        # An escape key and the rest of its sequence may arrive in two reads; wait a moment for the rest.
        if data.endswith(b"\x1b") and select.select([self.fd], [], [], 0.02)[0]:
            data += os.read(self.fd, 1024)
        return split_keys(data.decode("utf-8", "replace"))
