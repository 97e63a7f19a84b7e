"""The storage engine: a data directory of topics, each a set of partitions, each an append-only log.

Bottom-up:

    fileio.py       how every file is opened, locked, written and synced
    names.py        the rule for topic, group and share names
    location.py     where things live in a data directory, without opening it
    batch.py        a record batch: its bytes on disk and its columns in memory
    framing.py      splitting input into records (lines, delimiters, length prefixes)
    index.py        a segment's sparse offset index
    segment.py      segment files: the one walk to a segment's end, damage, quarantine
    cursor.py       reading a partition from an offset
    log_writer.py   a partition's writer: append, roll, recovery of its tail, truncation
    partition.py    one partition: its files, locks, reading and lookup (its writes: log_writer)
    partitioner.py  which partition a key goes to (Kafka's murmur2)
    maintain.py     retention, trim and compaction of closed segments
    topic.py        a topic: its settings and partitions
    datadir.py      the data directory: topics, format, creation and deletion

Nothing here knows groups, share groups, backends or the CLI.
"""
