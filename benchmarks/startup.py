"""How long a `kq` command and a Tab completion take to start, beside the floor.

The floor is `python -c 'import typer, msgpack, portalocker'`: what any
command built on kq's fixed dependencies pays before doing anything. Each
case runs in interleaved rounds (so that a busy moment hits every case
alike) and the medians are compared:

    python benchmarks/startup.py            # 30 rounds
    python benchmarks/startup.py --rounds 50

The target (issue #11.19): every command and every completion within 20 ms
of the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_MS = 20.0


def kq_script() -> list[str]:
    """The installed console script beside this interpreter (a pyenv shim would add its own start-up)."""
    script = os.path.join(os.path.dirname(sys.executable), "kq")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "kq"]


def cases(data: str) -> dict[str, tuple[list[str], dict, bytes | None]]:
    kq = kq_script()

    def complete(words: str) -> tuple[list[str], dict, None]:
        line = f"kq --data-dir {data} {words}"
        env = {
            "_KQ_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1)),
        }
        return kq, env, None

    return {
        "floor: import typer, msgpack, portalocker": (
            [sys.executable, "-c", "import typer, msgpack, portalocker"],
            {},
            None,
        ),
        "kq --version": (kq + ["--version"], {}, None),
        "echo x | kq produce t": (kq + ["--data-dir", data, "produce", "t"], {}, b"x\n"),
        "kq consume t -n 1": (kq + ["--data-dir", data, "consume", "t", "-n", "1"], {}, None),
        "kq topic list": (kq + ["--data-dir", data, "topic", "list"], {}, None),
        "kq topic describe t": (kq + ["--data-dir", data, "topic", "describe", "t"], {}, None),
        "kq offsets show t": (kq + ["--data-dir", data, "offsets", "show", "t"], {}, None),
        "kq group list": (kq + ["--data-dir", data, "group", "list"], {}, None),
        "kq verify t": (kq + ["--data-dir", data, "verify", "t"], {}, None),
        "Tab: kq <Tab>": complete(""),
        "Tab: kq consume <Tab> (topic names)": complete("consume "),
        "Tab: kq consume t -g <Tab> (group names)": complete("consume t -g "),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="kq-startup-")
    subprocess.run(kq_script() + ["--data-dir", data, "-q", "produce", "t"], input=b"a\nb\n", check=True)
    subprocess.run(kq_script() + ["--data-dir", data, "consume", "t", "-g", "g"], capture_output=True, check=True)
    todo = cases(data)
    env_base = {**os.environ}
    env_base.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: byte-compiled
    times: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(3):  # warm the page cache and byte-compile
        for argv, env, stdin in todo.values():
            subprocess.run(argv, input=stdin, capture_output=True, env={**env_base, **env})
    for _ in range(args.rounds):
        for name, (argv, env, stdin) in todo.items():
            start = time.perf_counter()
            out = subprocess.run(argv, input=stdin, capture_output=True, env={**env_base, **env})
            times[name].append((time.perf_counter() - start) * 1000)
            if out.returncode:
                raise SystemExit(f"{name} failed: {out.stderr.decode()}")
    floor = statistics.median(times["floor: import typer, msgpack, portalocker"])
    print(f"start-up, medians of {args.rounds} interleaved rounds (ms); target: within {TARGET_MS:.0f} ms of the floor")
    print(f"{'case':48} {'median':>8} {'above floor':>12}")
    worst = 0.0
    for name, values in times.items():
        median = statistics.median(values)
        above = median - floor
        if not name.startswith("floor"):
            worst = max(worst, above)
        print(f"{name:48} {median:8.1f} {above:+12.1f}")
    print(
        f"worst: {worst:+.1f} ms above the floor ({'within' if worst <= TARGET_MS else 'beyond'} the {TARGET_MS:.0f} ms target)"
    )


if __name__ == "__main__":
    main()
