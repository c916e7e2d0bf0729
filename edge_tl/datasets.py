"""Importers that turn public defect data sets into an ImageFolder for the demo and benchmarks."""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
from pathlib import Path

from .errors import DataError
from .manifest import staged_folder, write_json


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def elpv_rows() -> tuple[Path, list[tuple[str, float, str]]]:
    """(data folder, [(relative image path, defect probability, cell type)]) of the installed elpv set."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the elpv data set is not installed: pip install elpv-dataset")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    rows = []
    with open(data / "labels.csv") as f:
        for line in csv.reader(f, delimiter=" ", skipinitialspace=True):
            if line:
                rows.append((line[0], float(line[1]), line[2]))
    return data, rows


def import_elpv(dest: str | Path, threshold: float = 0.5) -> dict[str, int]:
    """The elpv solar-cell set (``pip install elpv-dataset``) as ``dest/{defect,ok}/``.

    A cell whose annotated defect probability is ≥ ``threshold`` is ``defect``, else ``ok``.
    """
    data, rows = elpv_rows()
    counts = {"defect": 0, "ok": 0}
    with staged_folder(Path(dest)) as tmp:
        for name in counts:
            (tmp / name).mkdir()
        for rel, prob, cell_type in rows:
            label = "defect" if prob >= threshold else "ok"
            src = data / rel
            _link_or_copy(src, tmp / label / f"{cell_type}_{src.name}")
            counts[label] += 1
        write_json(tmp / "SOURCE.json", {"dataset": "elpv (Buerhop-Lutz et al.), CC BY-NC-SA 4.0",
                                         "threshold": threshold, "counts": counts})
    return counts


def import_elpv_anomaly(dest: str | Path, threshold: float = 0.5, train_share: float = 0.7,
                        seed: int = 0) -> dict[str, int]:
    """elpv for good-only anomaly detection: ``dest/train/good`` (``train_share`` of the cells with defect
    probability 0, drawn with ``seed``), ``dest/test/good`` (the other good cells) and ``dest/test/defect``
    (probability ≥ ``threshold``); cells in between are left out. File names start with the cell type
    (``mono_``/``poly_``) so figures can be split by it.
    """
    import random

    data, rows = elpv_rows()
    good = [r for r in rows if r[1] == 0.0]
    random.Random(seed).shuffle(good)
    n_train = round(train_share * len(good))
    parts = {"train/good": good[:n_train], "test/good": good[n_train:],
             "test/defect": [r for r in rows if r[1] >= threshold]}
    with staged_folder(Path(dest)) as tmp:
        for part, items in parts.items():
            (tmp / part).mkdir(parents=True)
            for rel, _prob, cell_type in items:
                src = data / rel
                _link_or_copy(src, tmp / part / f"{cell_type}_{src.name}")
        counts = {k: len(v) for k, v in parts.items()}
        write_json(tmp / "SOURCE.json", {"dataset": "elpv (Buerhop-Lutz et al.), CC BY-NC-SA 4.0",
                                         "layout": "anomaly", "threshold": threshold, "train_share": train_share,
                                         "seed": seed, "counts": counts})
    return counts
