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
    export: bool = typer.Option(False, "--export", help="First export each chosen target this host can run "
                                "and that is not exported yet (with --all-targets: every CPU/GPU target of "
                                "this host, as `yolo benchmark` does); the others are skipped with the reason."),
    data: Path = typer.Option(None, help="Another labelled folder with the same classes to evaluate on; its "
                              "reports go to RUN/reports/data-<name>-<sha8>/ (the run's own stay as they are) "
                              "and its preprocessed images and reference logits are cached in RUN/evalsets/."),
    layers: bool = typer.Option(False, "--layers", help="Also print where the time goes: the top layers of one "
                                "batch-1 call with their time share and precision (OpenVINO performance "
                                "counters, ONNX Runtime profiler)."),
    json_path: Path = typer.Option(None, "--json", metavar="PATH", help="Also write the JSON here: with one "
                                   "target its report, with several (or --all-targets) a JSON list of their "
                                   "reports in bench order, skipped ones included (written atomically)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Accuracy only (a check on new data): time "
                                    "nothing, neither the reference nor the candidate; latency, throughput and "
                                    "speedup are null and a latency gate is reported as not measured."),
    wait_quiet: float = typer.Option(0.0, "--wait-quiet", min=0.0, metavar="SECONDS",
                                     help="Before timing, wait up to this long for other processes to leave the "
                                     "CPUs; if they never do, bench anyway and mark the timings unreliable."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Measure accuracy, drift, latency, throughput and memory of targets against the full torch model
    (for an anomaly run: AUROC, decision agreement, false-reject and escape rates); exit 1 on a failed gate.

    The torch reference is timed once per bench for each threads / batch / input size / device and shared
    by the targets that match (the reports say so).
    """
    from ..bench.report import headline, is_anomaly, layers_text, markdown, summary_table
    from ..gates import failed_text
    from ..orchestrate import bench as run_bench

    if not target and not all_targets:
        raise ConfigError("give --target NAME (repeatable) or --all-targets")
    reports = run_bench(run, None if all_targets else list(target), data=str(data) if data else None,
                        json_path=str(json_path) if json_path else None, quiet=quiet or state.quiet,
                        wait_quiet=wait_quiet, export=export, layers=layers, latency=not no_latency)
    print(markdown(reports[0]) if len(reports) == 1 else summary_table(reports))
    if no_latency:
        print("\nlatency not measured (--no-latency): accuracy only; latency gates are neither passed nor failed")
    anomaly = [r for r in reports if is_anomaly(r)]
    if anomaly:
        # The tables above are wide; a QC decision rests on these four figures, so close with them
        # one line per target, where a terminal or a CI log shows them last.
        print("\n" + "\n".join(headline(r) for r in anomaly))
    if layers and len(reports) > 1:
        for r in reports:
            if r.get("layers"):
                print(f"\n## {r['target']}\n\n{layers_text(r['layers'])}")
    failed = [failed_text(r) for r in reports if not r["passed"]]
    if failed:
        raise GateFailed(", ".join(failed))
