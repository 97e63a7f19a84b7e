"""`kq produce --json` and `kq consume --json` (the JSON-lines envelope) beside the text path and `cat`.

    python benchmarks/json_lines.py [--messages 200000] [--size 100] [--runs 5] [--kq-root DIR ...]

Whole processes, medians of --runs runs, all in one run of this script: the
text path (plain lines) and `cat` of the same bytes are measured beside each
JSON figure, because the machine is shared and noisy: compare the ratios.
Each produce writes into a fresh data directory. `--kq-root` runs the kq of
another checkout; repeated, the checkouts take turns within each run (a
before/after against an older commit under the same load).

Beside them, to explain what is left: the start-up (`produce --json` of one
line, the same for the text path), and the floors of the parse in this
process, without start-up: splitting the JSON lines and decoding each with
msgspec into kq's typed line (what `produce --json` does for the common
shape), or with `orjson.loads` or the stdlib's `json.loads` into a dict.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from produce_consume import make_input  # noqa: E402


def timed(cmd: str, env: dict, cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, env=env, cwd=cwd)
    return time.perf_counter() - start


def parse_floors(path: str, root: str, runs: int) -> dict[str, float]:
    """Seconds (the best of ``runs``) to split the lines of ``path`` and decode each, per decoder."""
    import json

    with open(path, "rb") as f:
        data = f.read()
    decoders = {"json.loads": json.loads}
    try:
        import orjson

        decoders["orjson.loads"] = orjson.loads
    except ImportError:
        pass
    for name in [name for name in sys.modules if name == "kq" or name.startswith("kq.")]:
        del sys.modules[name]  # another root's
    sys.path.insert(0, root)
    try:
        from kq.envelope import _line_decoder

        decoders["msgspec, kq's typed line"] = _line_decoder()
    except ImportError:  # an older checkout
        pass
    finally:
        sys.path.remove(root)
    floors = {}
    for name, decode in decoders.items():
        best = float("inf")
        for _ in range(runs if name != "json.loads" else 1):
            start = time.perf_counter()
            begin = 0
            while begin < len(data):  # 1 MiB at a time, as kq reads
                end = data.rfind(b"\n", begin, begin + (1 << 20)) + 1 or len(data)
                list(map(decode, data[begin:end].split(b"\n")[:-1]))
                begin = end
            best = min(best, time.perf_counter() - start)
        floors[name] = best
    return floors


NAMES = ["cat text", "kq produce", "cat json", "kq produce --json", "kq consume", "kq consume --json", "start-up"]


def one_run(kq: str, env: dict, work: str, text: str, lines: str, one_line: str, results: dict) -> None:
    """Time each command once for one checkout's kq, appending to ``results``; check the copy is exact."""
    text_dir, json_dir, one_dir = (tempfile.mkdtemp(prefix=name, dir=work) for name in ("text", "json", "one"))
    for name in (text_dir, json_dir, one_dir):
        os.rmdir(name)  # each produce makes its data directory afresh
    results["cat text"].append(timed(f"cat {text} | cat > /dev/null", env, work))
    results["kq produce"].append(timed(f"cat {text} | {kq} --data-dir {text_dir} -q produce bench", env, work))
    results["cat json"].append(timed(f"cat {lines} | cat > /dev/null", env, work))
    results["kq produce --json"].append(
        timed(f"cat {lines} | {kq} --data-dir {json_dir} -q produce bench --json", env, work)
    )
    results["kq consume"].append(timed(f"{kq} --data-dir {text_dir} consume bench > /dev/null", env, work))
    results["kq consume --json"].append(
        timed(f"{kq} --data-dir {json_dir} consume bench --json > /dev/null", env, work)
    )
    results["start-up"].append(timed(f"cat {one_line} | {kq} --data-dir {one_dir} -q produce bench --json", env, work))
    # The copy is exact: the JSON produced reads back as the same lines, offsets and timestamps included.
    check = subprocess.run(
        f"{kq} --data-dir {json_dir} consume bench --json | cmp -s - {lines}", shell=True, env=env, cwd=work
    )
    if check.returncode != 0:
        sys.exit(f"consume --json of the --json copy differs from its input ({env['PYTHONPATH']})")
    for name in (text_dir, json_dir, one_dir):
        shutil.rmtree(name)


def report(root: str, results: dict, n: int, lines: str, runs: int) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"kq from {root}")
    print(f"{'what':<20}{'seconds':>10}{'msg/s':>14}")
    for k, v in med.items():
        print(f"{k:<20}{v:>10.3f}{n / v if k != 'start-up' else 1 / v:>14,.0f}")
    for direction in ("produce", "consume"):
        plain, as_json = med[f"kq {direction}"], med[f"kq {direction} --json"]
        print(
            f"{direction} --json: {n / as_json:,.0f} msg/s, {as_json / plain:.1f}x the time of the text path, "
            f"{as_json / med['cat json']:.1f}x the time of cat of the JSON lines"
        )
    beyond = med["kq produce --json"] - med["start-up"]
    print(
        f"produce --json beyond start-up: {n / beyond:,.0f} msg/s ({beyond / n * 1e9:,.0f} ns a line; "
        f"start-up {med['start-up'] * 1e3:.0f} ms, {med['start-up'] / med['kq produce --json']:.0%} of the run)"
    )
    for name, seconds in parse_floors(lines, root, runs).items():
        print(
            f"floor: split + {name} of each line, in process: {n / seconds:,.0f} lines/s "
            f"({seconds / n * 1e9:,.0f} ns a line)"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100, help="bytes per message, newline included")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--kq-root",
        action="append",
        help="a checkout whose kq runs (repeat it to compare checkouts, run by run) \\[default: this one]",
    )
    args = ap.parse_args()

    roots = [os.path.abspath(root) for root in args.kq_root or [REPO]]
    envs = {}
    for root in roots:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "kq")], check=True)
        envs[root] = {**os.environ, "PYTHONPATH": root}
        envs[root].pop("KQ_DATA_DIR", None)
    kq = f"{sys.executable} -m kq"
    work = tempfile.mkdtemp(prefix="kq-bench-json-")
    try:
        text = os.path.join(work, "input.txt")
        make_input(text, args.messages, args.size)
        source = os.path.join(work, "source")
        env = envs[roots[-1]]
        # Run from the work directory: `python -m kq` in a checkout would import that checkout's kq.
        subprocess.run(f"{kq} --data-dir {source} -q produce bench < {text}", shell=True, check=True, env=env, cwd=work)
        lines = os.path.join(work, "input.json")
        subprocess.run(
            f"{kq} --data-dir {source} consume bench --json > {lines}", shell=True, check=True, env=env, cwd=work
        )
        one_line = os.path.join(work, "one.json")
        with open(lines, "rb") as f, open(one_line, "wb") as out:
            out.write(f.readline())
        results: dict[str, dict[str, list[float]]] = {root: {name: [] for name in NAMES} for root in roots}
        for _ in range(args.runs):
            for root in roots:  # checkouts in turn, so that each sees the same moments of load
                one_run(kq, envs[root], work, text, lines, one_line, results[root])
        n = args.messages
        print(
            f"{n:,} messages of {args.size} bytes ({os.path.getsize(lines) / n:.0f} bytes a JSON line), "
            f"median of {args.runs} runs, {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}\n"
        )
        for root in roots:
            report(root, results[root], n, lines, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
