"""Write the static completion scripts for bash, zsh and fish from the kq command itself.

    python completions/generate.py          # rewrite completions/kq.bash, _kq, kq.fish
    python completions/generate.py --check  # exit 1 if any file is out of date

The scripts are typer's (the same as `kq --show-completion SHELL` prints): on Tab they ask
`kq` itself for candidates, so commands, options, topics, groups and
partitions are always current.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = {"bash": "kq.bash", "zsh": "_kq", "fish": "kq.fish"}


def scripts() -> dict[str, str]:
    sys.path.insert(0, os.path.dirname(HERE))
    from kq.cli.completion import completion_script

    return {name: completion_script(shell) for shell, name in FILES.items()}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in scripts().items():
        path = os.path.join(HERE, name)
        try:
            with open(path) as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(name)
        if not check:
            with open(path, "w") as f:
                f.write(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)}; run python completions/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
