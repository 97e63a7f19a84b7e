"""Share groups as a job queue: kq beside Redis Streams, in one run.

    python benchmarks/share.py [--exec-records 100000] [--parallel 8] [--records 1000000] [--batch 1000]

1. `kq consume jobs --share bench --exec true --parallel 8` over --exec-records
   records (a no-op command per record: what the worker loop, the leases and
   the fork of a shell cost per record).
2. The library path: --records records through kq.share.consumer.ShareConsumer,
   acquire --batch at a time, process nothing, acknowledge the batch with the
   next acquisition (`acquire(n, ack=batch)`, one state change each); beside
   Redis Streams with redis-py: XREADGROUP COUNT --batch, then XACK of the
   batch's ids (the pending-entries list is Redis' lease table). Redis is
   Debian's redis-server, started here on a Unix socket with its default
   persistence (RDB snapshots, no fsync per command); kq writes its share
   state with an fsync per change. Records are 100 bytes.

Each figure is the median of --runs runs. With --profile, the kq library
run is profiled and the top functions printed.
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
sys.path.insert(0, REPO)
KQ = [sys.executable, "-m", "kq"]
VALUE = b"x" * 100


def fill(data_path: str, records: int, partitions: int = 1) -> None:
    import kq

    data = kq.DataDir(data_path)
    topic = data.create_topic("jobs", partitions)
    per = records // partitions
    for p in range(partitions):
        part = topic.partition(p)
        for start in range(0, per, 10_000):
            part.append([VALUE] * min(10_000, per - start))
    topic.close()


def kq_exec(work: str, records: int, parallel: int) -> float:
    data = os.path.join(work, "exec")
    fill(data, records, partitions=4)
    start = time.perf_counter()
    r = subprocess.run(
        KQ
        + [
            "--data-dir",
            data,
            "-q",
            "consume",
            "jobs",
            "--share",
            "bench",
            "--exec",
            "true",
            "--parallel",
            str(parallel),
        ],
        capture_output=True,
    )
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        sys.exit(f"kq consume --share --exec failed: {r.stderr.decode()}")
    check = subprocess.run(
        KQ + ["--data-dir", data, "offsets", "show", "jobs", "--json"], capture_output=True, check=True
    )
    import json

    lag = sum(row["lag"] for row in json.loads(check.stdout))
    if lag:
        sys.exit(f"kq left {lag} records unsettled")
    shutil.rmtree(data)
    return seconds


def popen_floor(records: int, parallel: int) -> float:
    """The same number of `sh -c true` processes, ``parallel`` at a time, from a bare Python loop:
    what forking a shell per record costs on this machine, with nothing else."""
    running: list[subprocess.Popen] = []
    start = time.perf_counter()
    for _ in range(records):
        if len(running) >= parallel:
            running.pop(0).wait()
        running.append(subprocess.Popen("true", shell=True, stdin=subprocess.DEVNULL))
    for p in running:
        p.wait()
    return time.perf_counter() - start


def kq_library(work: str, records: int, batch: int, profile: bool = False) -> float:
    import kq
    from kq.share.consumer import ShareConsumer

    path = os.path.join(work, "lib")
    fill(path, records)
    data = kq.DataDir(path)
    topic = data.topic("jobs")
    worker = ShareConsumer(data, topic, "bench")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    done = 0
    got = worker.acquire(batch)
    while got:
        for d in got:
            d.value  # noqa: B018 (a worker reads each record)
        # The batch's acknowledgements go with the next acquisition: one state change per batch.
        got = worker.acquire(batch, ack=got)
        done += worker.last_ack.acked
    seconds = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    worker.close()
    topic.close()
    if done != records:
        sys.exit(f"kq acknowledged {done} of {records}")
    shutil.rmtree(path)
    return seconds


class RedisServer:
    """Debian's redis-server on a Unix socket in a temporary directory, stopped on exit."""

    def __init__(self, work: str):
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed: apt-get install redis-server")
        self.dir = os.path.join(work, "redis")
        os.makedirs(self.dir)
        self.socket = os.path.join(self.dir, "redis.sock")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", self.socket, "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                self.client = redis.Redis(unix_socket_path=self.socket)
                self.client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)
        self.version = self.client.info()["redis_version"]

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def redis_streams(server: RedisServer, records: int, batch: int) -> float:
    r = server.client
    r.delete("jobs")
    pipe = r.pipeline(transaction=False)
    for i in range(records):
        pipe.xadd("jobs", {"v": VALUE})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    r.xgroup_create("jobs", "bench", id="0")
    start = time.perf_counter()
    done = 0
    while True:
        reply = r.xreadgroup("bench", "worker", {"jobs": ">"}, count=batch)
        if not reply:
            break
        entries = reply[0][1]
        for _, fields in entries:
            fields[b"v"]  # noqa: B018 (a worker reads each record)
        done += r.xack("jobs", "bench", *[entry_id for entry_id, _ in entries])
    seconds = time.perf_counter() - start
    if done != records:
        sys.exit(f"Redis acknowledged {done} of {records}")
    r.delete("jobs")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exec-records", type=int, default=100_000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "kq")], check=True)
    work = tempfile.mkdtemp(prefix="kq-share-bench-")
    server = None
    try:
        import redis

        server = RedisServer(work)
        results: dict[str, list[float]] = {"exec": [], "floor": [], "kq": [], "redis": []}
        for _ in range(args.runs):
            if args.exec_records:
                results["exec"].append(kq_exec(work, args.exec_records, args.parallel))
                results["floor"].append(popen_floor(args.exec_records, args.parallel))
            results["kq"].append(kq_library(work, args.records, args.batch))
            results["redis"].append(redis_streams(server, args.records, args.batch))
        if args.profile:
            kq_library(work, args.records, args.batch, profile=True)
        med = {k: statistics.median(v) for k, v in results.items() if v}
        print(
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, redis-server {server.version}, "
            f"redis-py {redis.__version__} (hiredis: {'yes' if _has_hiredis() else 'no'}), median of {args.runs} runs"
        )
        print(f"{'what':<58}{'seconds':>9}{'records/s':>12}")
        if "exec" in med:
            print(
                f"{f'kq consume --share --exec true --parallel {args.parallel}, {args.exec_records:,}':<58}"
                f"{med['exec']:>9.2f}{args.exec_records / med['exec']:>12,.0f}"
            )
            print(
                f"{f'  floor: a Python loop of Popen(sh -c true), {args.parallel} at a time':<58}"
                f"{med['floor']:>9.2f}{args.exec_records / med['floor']:>12,.0f}"
            )
        print(
            f"{f'kq ShareConsumer acquire+ack {args.batch}, {args.records:,}':<58}{med['kq']:>9.2f}{args.records / med['kq']:>12,.0f}"
        )
        print(
            f"{f'Redis Streams XREADGROUP+XACK {args.batch}, {args.records:,}':<58}"
            f"{med['redis']:>9.2f}{args.records / med['redis']:>12,.0f}"
        )
        print(f"kq library / Redis Streams: {med['redis'] / med['kq']:.2f}x")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _has_hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
