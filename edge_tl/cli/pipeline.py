"""``run`` (a whole pipeline from one file) and ``dataset`` (import public demo data)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError
from ..progress import console
from ._app import app, require_training, state


@app.command("run")
def run_cmd(pipeline: Path = typer.Argument(..., metavar="PIPELINE.toml", help="Pipeline file: one table per "
                                                 "stage (docs/pipeline.md, examples/)."),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
            force: bool = typer.Option(False, "--force", help="Run every stage again, even those whose outputs "
                                       "are up to date.")) -> None:
    """Run finetune -> prune -> export -> bench -> bundle as one file describes; exit 1 on a failed gate.

    Every key of the file is an option of the command of the same name; docs/pipeline.md lists them all.
    The whole file is checked before any stage runs (paths, target names, the bundle's options against the
    data's classes). On a re-run, a stage whose outputs are up to date (same settings, same inputs by
    sha256, outputs untouched since; recorded in RUN/pipeline.json) is skipped with "skip STAGE: up to
    date (--force to redo)". Needs the train extra (torch): pip install 'edge-tl[train]'.
    """
    from ..pipeline import check_pipeline

    check_pipeline(pipeline)  # a bad file is reported before anything heavy is imported, or any work
    require_training()
    from ..bench.report import summary_table
    from ..errors import GateFailed
    from ..gates import failed_text
    from ..pipeline import load_pipeline, run_pipeline
    from .train import finetune_summary

    tuned, reports, shipped = run_pipeline(pipeline, quiet=quiet or state.quiet, force=force)
    if tuned:
        out = Path(load_pipeline(pipeline).finetune.out)
        console().print(finetune_summary(tuned, out if out.is_absolute() else pipeline.parent / out),
                                   soft_wrap=True)
    if reports:
        print(summary_table(reports))
    if shipped is not None:
        from .deploy import policy_line

        print(f"shipped {shipped['target']['name']}: {policy_line(shipped['policy'])}")
    failed = [failed_text(r) for r in reports if not r["passed"]]
    if failed:
        raise GateFailed(", ".join(failed))


@app.command()
def dataset(name: str = typer.Argument(..., metavar="NAME", help="elpv (solar cells; pip install elpv-dataset)."),
            out: Path = typer.Option(..., "--out", metavar="DIR", help="ImageFolder to create."),
            threshold: float = typer.Option(0.5, help="elpv: defect probability at or above which a cell is "
                                            "'defect'."),
            anomaly: bool = typer.Option(False, "--anomaly", help="Lay it out for good-only anomaly detection: "
                                         "train/good (70 % of the defect-free cells), test/good, test/defect.")
            ) -> None:
    """Import a public defect data set as an ImageFolder."""
    if name != "elpv":
        raise ConfigError(f"unknown data set {name!r}; available: elpv")
    from ..datasets import import_elpv, import_elpv_anomaly

    counts = import_elpv_anomaly(out, threshold) if anomaly else import_elpv(out, threshold)
    console().print(f"[green]imported[/] elpv -> {out}: {counts}")
