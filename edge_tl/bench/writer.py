"""Report files: ``reports/<target>.json`` (the contract in design.md), ``.md`` and ``.html``, and the
run index beside them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import write_bytes, write_json
from .html import render_html, write_index
from .report import markdown
from .schema import check_report


def write_reports(report: dict[str, Any], reports_dir: Path, json_path: Path | None = None,
                  index_root: Path | None = None) -> Path:
    """Write the JSON, Markdown and HTML reports atomically; returns the JSON path.

    ``index_root``: the run's ``reports/`` folder when ``reports_dir`` is a ``--data`` subfolder of it;
    the run index there (``index.html``, ``index.json``) is rebuilt from every report of every
    evaluation set, and the subfolder gets an index of its own set.

    The report is checked against :class:`~.schema.Report` first: a field that does not fit fails here,
    before any file is written (the dict is written as it is, not the model's dump).
    """
    check_report(report)
    name = report["target"]
    dest = reports_dir / f"{name}.json"
    write_json(dest, report)
    if json_path is not None:
        write_json(json_path, report)
    write_bytes(reports_dir / f"{name}.md", markdown(report).encode())
    write_bytes(reports_dir / f"{name}.html", render_html(report).encode())
    root = index_root or reports_dir
    if root.resolve() != reports_dir.resolve():
        write_index(reports_dir, data_sets=False)
    write_index(root)  # the run's page, rebuilt from every report of every evaluation set
    return dest
