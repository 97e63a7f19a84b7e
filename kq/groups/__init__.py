"""Consumer groups over a data directory: committed offsets, members sharing partitions.

Modules:

    store.py        the group files (offsets, member files, partition claims) and ``GroupConsumer``
"""
