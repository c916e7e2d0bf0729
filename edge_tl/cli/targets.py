"""``targets``: list the deployment profiles or show one."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ._app import app


@app.command()
def targets(name: str = typer.Argument(None, help="A target name or profile path to show.")) -> None:
    """List the target profiles, or show one in full."""
    from ..targets import builtin_targets, get_target

    console = Console()
    if name:
        t = get_target(name)
        console.print_json(data=t.model_dump() | {"source": t.source})
        return
    table = Table("name", "backend", "device", "precision", "batch", "threads", "gates")
    for t in builtin_targets().values():
        gates = ", ".join(f"{k}={v}" for k, v in t.gates.model_dump().items() if v is not None)
        table.add_row(t.name, t.backend, t.device, t.precision, str(t.batch_size), str(t.threads), gates)
    console.print(table)
