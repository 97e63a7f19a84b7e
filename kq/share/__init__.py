"""Share groups (job queues): records of the same partitions shared among any number of workers,
each acquired under a lease and settled on its own (acknowledged, retried, dead-lettered).

    state.py        the state files, leases, ``ShareConsumer``, dead letters, describe and lag rows
    runner.py       ``kq consume --share --exec``: a command per record, run in parallel

The library's names, imported on first use so that ``import kq.share`` stays cheap.
"""

_EXPORTS = {
    "Delivery": "state",
    "Failure": "state",
    "Outcome": "state",
    "ShareConsumer": "state",
    "ShareSettings": "state",
    "Shares": "state",
    "describe_share": "state",
    "share_offset_rows": "state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kq.share' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"kq.share.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
