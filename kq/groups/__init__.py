"""Consumer groups over a data directory: committed offsets, members sharing partitions.

Modules:

    store.py        the group files: committed offsets, member files, listing, deletion
    member.py       a process's membership of a group on a topic, and its partition claims
    consumer.py     ``GroupConsumer``, and where a group resumes in a partition
"""
