"""``targets``: list the deployment profiles or show one."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ._app import app


@app.command()
def targets(name: str = typer.Argument(None, metavar="NAME|PATH", help="A target name or profile path to show "
                                       "as TOML you can save and pass to --target."),
            as_json: bool = typer.Option(False, "--json", help="Show the profile as JSON (with its source file) "
                                         "instead of TOML.")) -> None:
    """List the target profiles, or show one in full (TOML on stdout: save it, edit it, pass it to --target)."""
    from ..targets import builtin_targets, get_target

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 140)  # piped output: never truncate target names
    if name:
        t = get_target(name)
        if as_json:
            print(json.dumps(t.model_dump() | {"source": t.source}, indent=2))
        else:
            print(t.to_toml(), end="")
        return
    if as_json:
        print(json.dumps({n: t.model_dump() | {"source": t.source} for n, t in builtin_targets().items()}, indent=2))
        return
    table = Table("name", "backend", "device", "precision", "batch", "threads", "gates")
    table.columns[0].no_wrap = True
    short = {"max_top1_drop": "drop≤{} pt", "min_agreement": "agree≥{}",
             "max_balanced_accuracy_drop": "balanced drop≤{} pt", "max_p95_ms": "p95≤{} ms",
             "max_auroc_drop": "anomaly: AUROC drop≤{}", "min_decision_agreement": "decisions≥{}",
             "max_map_drop": "detect: mAP@0.5 drop≤{} pt", "min_box_agreement": "boxes≥{}"}
    for t in builtin_targets().values():
        gates = ", ".join(short[k].format(v) for k, v in t.gates.model_dump().items() if v is not None)
        table.add_row(t.name, t.backend, t.device, t.precision, str(t.batch_size), str(t.threads), gates)
    console.print(table)
