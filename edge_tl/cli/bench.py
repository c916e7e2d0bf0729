"""``bench``: reference vs candidate, in one process."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError, GateFailed
from ._app import app, state


@app.command()
def bench(
    run: Path = typer.Argument(..., help="Run directory."),
    target: list[str] = typer.Option(None, "--target", "-t", help="Target(s) to bench (repeatable)."),
    all_targets: bool = typer.Option(False, "--all-targets", help="Every built-in target; the ones this "
                                     "host cannot run (or not exported) are reported as skipped."),
    data: Path = typer.Option(None, help="Another labelled folder with the same classes to evaluate on."),
    json_path: Path = typer.Option(None, "--json", help="Also write the JSON report here (one target)."),
    wait_quiet: float = typer.Option(0.0, "--wait-quiet", min=0.0, metavar="SECONDS",
                                     help="Before timing, wait up to this long for other processes to leave the "
                                     "CPUs; if they never do, bench anyway and mark the timings unreliable."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure accuracy, drift and latency of targets against the full torch model; exit 1 on a failed gate."""
    from ..bench.report import markdown, summary_table
    from ..bench.run import bench as run_bench

    if not target and not all_targets:
        raise ConfigError("give --target NAME (repeatable) or --all-targets")
    reports = run_bench(run, None if all_targets else list(target), data=str(data) if data else None,
                        json_path=str(json_path) if json_path else None, quiet=quiet or state.quiet,
                        wait_quiet=wait_quiet)
    print(markdown(reports[0]) if len(reports) == 1 else summary_table(reports))
    failed = [r["target"] for r in reports if not r["passed"]]
    if failed:
        raise GateFailed(", ".join(failed))
