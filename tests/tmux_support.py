"""A terminal a test can look at and type into: one tmux session on a private socket.

``kq top`` is a full-screen program; it is tested as a person uses it: run in
a terminal of a known size, the screen read with ``capture-pane``, keys sent
with ``send-keys``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time

TMUX = shutil.which("tmux")


class Tmux:
    """``tmux new-session -d -x WIDTH -y HEIGHT CMD`` on a socket of its own (tests never share a server)."""

    def __init__(self, socket_dir: str, width: int = 120, height: int = 40):
        self.socket = os.path.join(socket_dir, "tmux.sock")
        self.width, self.height = width, height

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [TMUX or "tmux", "-S", self.socket, *args], capture_output=True, text=True, check=check, timeout=10
        )

    def start(self, command: list[str], env: dict | None = None) -> None:
        """Run ``command`` in the session's one pane; when it ends, the shell around it writes its exit
        code (``EXIT=N``) and the terminal's line settings (``TTY: icanon echo``, or ``-icanon -echo`` if
        the command left them changed), and the pane stays for the test to read."""
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        # COLUMNS and LINES from the test's own environment would override the pane's real size.
        # The shell outlives a Ctrl-C (a handler, not an ignore: the command gets SIGINT as it would
        # from an interactive shell) to report how the command ended.
        script = (
            f"unset COLUMNS LINES; trap : INT; {exports} {shlex.join(command)}; echo EXIT=$?; echo TTY: $(stty -a | tr ' ;' '\\n\\n' | grep -E '^-?(icanon|echo)$'); "
            "sleep 600"
        )
        self.tmux(
            "new-session",
            "-d",
            "-x",
            str(self.width),
            "-y",
            str(self.height),
            "sh",
            "-c",
            script,
        )

    def screen(self, escapes: bool = False) -> str:
        """What the pane shows now (``escapes``: with the colours, as ``capture-pane -e`` writes them)."""
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "0").stdout

    def wait_for(self, condition, timeout: float = 15.0, message: str = "the screen") -> str:
        """Read the screen until ``condition(text)`` holds; the screen that satisfied it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}; the screen:\n{text}")
            time.sleep(0.05)

    def send(self, *keys: str) -> None:
        """Keys as tmux names them: literal text, or Enter, Escape, C-c, ..."""
        self.tmux("send-keys", "-t", "0", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "0", "-l", text)

    def close(self) -> None:
        self.tmux("kill-server", check=False)
