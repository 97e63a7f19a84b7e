"""Share groups (job queues): records of the same partitions shared among any number of workers,
each acquired under a lease and settled on its own (acknowledged, retried, dead-lettered).

    state.py        a partition's state file (``P.share``): its ranges, the clocks of leases
    schedule.py     a partition's scheduled (delayed) records (``P.GEN.schedule``), kept apart from its ranges
    settings.py     the group's settings on a topic (``share.json``)
    shares.py       the share groups of a data directory (``Shares``), and their replication
    deliveries.py   a record under a lease (``Delivery``), lease ids, ``Failure``, ``Outcome``
    lease.py        the lease engine of one partition: acquire and settle under its lock
    dead_letter.py  copying records that failed for good to the dead-letter topic
    consumer.py     the worker (``ShareConsumer``): acquire from every partition, ack, nack, extend
    describe.py     ``kq group describe`` and ``kq offsets show`` rows
    runner.py       ``kq consume --share --exec``: a command per record, run in parallel
    commands.py     those commands as processes: stdin, stderr, exits, ``--exec-timeout``

The library's names, imported on first use so that ``import kq.share`` stays cheap.
"""

from ..lazy_exports import lazy_exports

_EXPORTS = {
    "Delivery": "deliveries",
    "Failure": "deliveries",
    "LEASE_EXPIRED": "deliveries",
    "Outcome": "deliveries",
    "parse_lease": "deliveries",
    "ShareConsumer": "consumer",
    "ShareSettings": "settings",
    "dead_letter_topic": "settings",
    "Shares": "shares",
    "copy_share_state": "shares",
    "describe_share": "describe",
    "share_offset_rows": "describe",
    "ShareRunner": "runner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
