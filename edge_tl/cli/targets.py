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
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped output: never truncate target names
    if name:
        t = get_target(name)
        console.print_json(data=t.model_dump() | {"source": t.source})
        return
    table = Table("name", "backend", "device", "precision", "batch", "threads", "gates")
    table.columns[0].no_wrap = True
    short = {"max_top1_drop": "drop≤{} pt", "min_agreement": "agree≥{}", "max_p95_ms": "p95≤{} ms"}
    for t in builtin_targets().values():
        gates = ", ".join(short[k].format(v) for k, v in t.gates.model_dump().items() if v is not None)
        table.add_row(t.name, t.backend, t.device, t.precision, str(t.batch_size), str(t.threads), gates)
    console.print(table)
