"""``bench``: reference vs candidate, in one process."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError, GateFailed
from ..settings import BenchSettings
from ._app import app, state
from .options import settings_command


@app.command()
@settings_command(BenchSettings)
def bench(
    run: Path = typer.Argument(..., help="Run directory."),
    settings: BenchSettings = ...,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure accuracy, drift, latency, throughput and memory of targets against the full torch model
    (for an anomaly run: AUROC, decision agreement, false-reject and escape rates); exit 1 on a failed gate.

    The torch reference is timed once per bench for each threads / batch / input size / device and shared
    by the targets that match (the reports say so).
    """
    from ..bench.report import headline, is_anomaly, layers_text, markdown, summary_table
    from ..gates import failed_text

    if not settings.targets and not settings.all_targets:
        raise ConfigError("give --target NAME (repeatable) or --all-targets")
    reports = settings.run(run, quiet=quiet or state.quiet)
    print(markdown(reports[0]) if len(reports) == 1 else summary_table(reports))
    if not settings.latency:
        print("\nlatency not measured (--no-latency): accuracy only; latency gates are neither passed nor failed")
    judged = [r for r in reports if is_anomaly(r) or r.get("task") == "detect"]
    if judged:
        # The tables above are wide; a QC decision rests on a few figures (AUROC and rates, mAP and box
        # agreement), so close with them one line per target, where a terminal or a CI log shows them last.
        print("\n" + "\n".join(headline(r) for r in judged))
    if settings.layers and len(reports) > 1:
        for r in reports:
            if r.get("layers"):
                print(f"\n## {r['target']}\n\n{layers_text(r['layers'])}")
    failed = [failed_text(r) for r in reports if not r["passed"]]
    if failed:
        raise GateFailed(", ".join(failed))
