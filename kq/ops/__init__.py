"""Operations over whole data directories, above the backends.

Modules:

    replicate.py    a replica directory kept identical to its source
    bridge.py       copying topics between a directory and a Kafka cluster (any two backends)
    verify.py       checking every file of a directory, and the repairs
    bench.py        ``kq bench``: produce and consume throughput
"""
