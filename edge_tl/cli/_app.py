"""The shared typer app and global options."""

from __future__ import annotations

from dataclasses import dataclass

import typer


@dataclass
class State:
    verbose: bool = False
    quiet: bool = False


state = State()

app = typer.Typer(
    name="edge-tl",
    help="Transfer an ImageNet backbone to your images, compress it, ship it to edge targets, "
    "and prove how fast and how faithful it is.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _global(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks for errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    state.verbose = verbose
    state.quiet = quiet
