"""``kq verify``: check, and with --repair fix, every file of a data directory (kq.ops.verify)."""

import typer

from .common import KqCommand, TopicsArgument, json_option, settings
from .output import human, print_json

app = typer.Typer(add_completion=False)  # only the top-level kq offers completion install


@app.command("verify", cls=KqCommand)
def verify_command(
    ctx: typer.Context,
    topics: TopicsArgument = None,
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Fix what can be fixed: rebuild indexes, truncate torn tails, move damaged bytes and unreadable offsets files to quarantine files; print each action.",
    ),
    json_output: bool = json_option(
        "A JSON list of problems: topic, partition, file, position, problem, severity (with --repair also action, repaired)."
    ),
) -> None:
    """Check every segment, index and offsets file; exit 0 only when no error is left.

    One line per problem on stdout: FILE: position N: SEVERITY: WHAT. Warnings
    (a group behind the start offset, the torn tail a crash leaves, which the
    next writer cuts) and info lines never fail the check.
    Nothing is skipped: a topic, partition or file verify cannot read (another
    user's directory, a FIFO where a file belongs) is an error line naming it.
    --repair holds each partition's writer and maintenance locks while it
    works, and never deletes data silently: see docs/FORMAT.md, "kq verify".

    [bold]Examples[/bold]

      kq verify

      kq verify orders --repair

      kq verify --json | jq -r '.[] | select(.severity == "error") | .file'
    """
    from ..ops.verify import ERROR, WARNING, Verifier

    s = settings(ctx)
    verifier = Verifier(s.data_dir("kq verify"), repair=repair)
    problems = []
    for p in verifier.run(list(dict.fromkeys(topics)) if topics else None):
        problems.append(p)
        if not json_output:
            print(p.line(), flush=True)
    if json_output:
        print_json([p.as_dict(with_action=repair) for p in problems])
    counts = verifier.counts
    outcome = (
        "clean" if not counts[ERROR] + counts[WARNING] else f"{counts[ERROR]} error(s), {counts[WARNING]} warning(s)"
    )
    if repair and counts[ERROR]:
        outcome += f"; {verifier.repaired} repaired, {verifier.unrepaired} not"
    s.info(
        f"verified {verifier.topics} topic(s), {verifier.partitions} partition(s), {verifier.segments} segment(s) "
        f"({human(verifier.bytes)}): {outcome}"
    )
    if not verifier.clean:
        raise typer.Exit(1)
