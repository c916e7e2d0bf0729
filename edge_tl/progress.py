"""One progress-bar style for every long task; ``quiet`` turns it off."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def progress(quiet: bool = False) -> Progress:
    """A rich Progress writing to stderr (stdout stays clean for JSON output)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=quiet,
        transient=False,
    )
