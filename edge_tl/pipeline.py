"""``edge-tl run PIPELINE.toml``: the whole chain from one file.

The file has one table per stage, each holding that command's options (docs/pipeline.md lists every
key); relative paths, profile files included, are taken from the file's folder. Stages run in the
fixed order finetune -> prune -> export -> bench -> bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError
from .rundir import RunDir
from .settings import (
    STAGES,
    BenchSettings,
    BundleSettings,
    ExportSettings,
    FinetuneSettings,
    PruneSettings,
    key_of_flag,
    keys,
)

log = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class Pipeline(BaseModel):
    """The file: one table per stage, each the stage's settings model (``edge_tl.settings``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    finetune: FinetuneSettings
    prune: PruneSettings | None = None
    export: ExportSettings | None = None
    bench: BenchSettings | None = None
    bundle: BundleSettings | None = None


STEPS = STAGES


def step_keys(step: str) -> list[str]:
    """The TOML keys of one table, in order (aliases as written in the file)."""
    return keys(STAGES[step])


def load_pipeline(path: Path) -> Pipeline:
    """Parse and validate a pipeline file; errors name the file and the key."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read pipeline: {exc}") from exc
    try:
        return Pipeline.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] == "extra_forbidden":
            import difflib

            table, name = (str(first["loc"][0]), str(first["loc"][-1])) if len(first["loc"]) > 1 else ("", key)
            known = step_keys(table) if table in STEPS else list(Pipeline.model_fields)
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            msg += f"; did you mean {near[0]}?" if near else f"; known: {', '.join(known)}"
        raise ConfigError(f"{path}: key '{key}': {msg}") from None


def check_pipeline(path: Path) -> Pipeline:
    """``load_pipeline``, then every check that needs no work: paths that must exist, target names, the
    bundle's options against the data's classes. Made before any stage, so a mistake in the last table
    costs a second, not a fine-tune. Errors name the file and the key (``bundle.ok_classes``), not a flag."""
    p = load_pipeline(path)
    here = path.parent

    def fail(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{path}: key '{key}': {msg}")

    def exists(key: str, value: str | None, kind: str = "folder") -> None:
        if value is not None and not (_resolve(here, value).is_dir() if kind == "folder"
                                      else _resolve(here, value).exists()):
            raise fail(key, f"{kind} not found: {_resolve(here, value)}")

    ft = p.finetune
    exists("finetune.data", ft.data)
    exists("finetune.val", ft.val)
    # finetune.weights is checked by the fine-tune itself before it trains (resolve_weights names the run).
    from .tasks import task_option_error

    wrong = task_option_error(ft.task, ft.weights, ft.baseline)
    if wrong is not None:
        raise fail(f"finetune.{wrong[0]}", f'{"run: " if wrong[0] == "weights" else ""}for task = "classify" only')
    from .tasks import unused_option

    unused = unused_option(ft.task, ft.model_fields_set)
    if unused is not None:
        raise fail(f"finetune.{unused[0]}", f'for task = "{unused[1]}"; task = "{ft.task}" does not use it: remove it')
    run = _resolve(here, ft.out)
    if p.prune is not None:
        exists("prune.data", p.prune.data)
    exported: set[str] = set()
    if p.export is not None:
        exists("export.calibration", p.export.calibration, "path")
        exists("export.data", p.export.data)
        if p.export.source == "prune" and p.prune is None and not (run / "prune" / "manifest.json").is_file():
            raise fail("export.source", f'"prune" needs a [prune] table (or a pruned run in {run})')
        exported = {_target(path, "export.targets", t).name for t in p.export.targets}
    if p.bench is not None:
        exists("bench.data", p.bench.data)
        for t in p.bench.targets or []:
            _target(path, "bench.targets", t)
    if p.bundle is not None:
        b = p.bundle
        for key, ref in [("bundle.target", b.target), *(("bundle.fallback", f) for f in b.fallback or [])]:
            name = _target(path, key, ref).name
            if name not in exported and not (run / "targets" / name / "manifest.json").is_file():
                raise fail(key, f"{name} is neither one of [export] targets nor exported in {run}")
        given = [k for k in ("ok_threshold", "max_false_reject", "max_escape") if getattr(b, k) is not None]
        if len(given) > 1:
            raise fail(f"bundle.{given[1]}", "give one of bundle.ok_threshold, bundle.max_false_reject and "
                                             f"bundle.max_escape, not {' and '.join(given)}")
        out = _resolve(here, b.out)
        if out.exists() and not (out / "bundle.json").is_file() and (not out.is_dir() or any(out.iterdir())):
            raise fail("bundle.out", f"{out} exists and is not an edge-tl bundle; refusing to replace it")
        _check_policy(b, _classes(p, here, fail), given, fail)
    return p


def _classes(p: Pipeline, here: Path, fail: Callable[[str, str], ConfigError]) -> list[str]:
    """The classes the fine-tune will have, known from the data folder before it runs."""
    if p.finetune.task == "anomaly":
        return ["good", "defect"]  # anomaly.fit.CLASSES (not imported here: it pulls in torch)
    data = _resolve(here, p.finetune.data)
    from .data import class_folders

    classes = class_folders(data)
    if len(classes) < 2:
        raise fail("finetune.data", f"{data} needs at least two class folders, found {len(classes)}")
    return classes


def _check_policy(b: BundleSettings, classes: list[str], given: list[str],
                  fail: Callable[[str, str], ConfigError]) -> None:
    """``[bundle]``'s class lists against the data's classes, as ``bundle`` would check them after the export."""
    from .runtime.policy import make_policy

    for key in ("ok_classes", "defect_classes"):
        unknown = [c for c in getattr(b, key) or () if c not in classes]
        if unknown:
            raise fail(f"bundle.{key}", f"unknown class(es) {', '.join(unknown)}; the classes are {', '.join(classes)}")
    try:
        policy = make_policy(classes, b.ok_classes, b.defect_classes)
    except ConfigError:
        raise fail("bundle.ok_classes", "every class is an ok class: name the defect classes with "
                                        "bundle.defect_classes") from None
    if not policy.ok_classes and given and given[0] in ("max_false_reject", "max_escape"):
        raise fail(f"bundle.{given[0]}", "needs an ok class (a false reject is a good part not passed): name it "
                                         f"with bundle.ok_classes (the classes are {', '.join(classes)})")


def _resolve(here: Path, value: str) -> Path:
    """A path of the file: relative to the file's folder unless absolute."""
    return Path(value) if Path(value).is_absolute() else (here / value).resolve()


def _target(path: Path, key: str, ref: str) -> Any:
    """The profile ``ref`` names: a built-in name, or a ``.toml`` file relative to the pipeline file."""
    from .targets import get_target

    try:
        return get_target(str(_resolve(path.parent, ref)) if ref.endswith(".toml") else ref)
    except ConfigError as exc:
        raise ConfigError(f"{path}: key '{key}': {exc}") from None


@contextlib.contextmanager
def _as_keys(path: Path, table: str) -> Iterator[None]:
    """A stage's ConfigError with its ``--option`` names turned into this file's keys (``--ok-class`` is
    ``bundle.ok_classes``): what a person edits is the file."""
    try:
        yield
    except ConfigError as exc:
        def key(m: re.Match[str]) -> str:
            name = key_of_flag(STAGES[table], m.group(0))
            return f"{table}.{name}" if name is not None else m.group(0)

        msg = re.sub(r"--[a-z][a-z0-9-]*", key, str(exc))
        if msg == str(exc):
            raise
        raise ConfigError(f"{path}: {msg}") from exc


STAMPS = "pipeline.json"


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON, so a stored record compares equal to a fresh one."""
    return json.loads(json.dumps(obj, default=str))


def _digest(path: Path | None) -> str | None:
    """What identifies an input: a file's sha256, a folder's images (``data_fingerprint``), else None."""
    from .data import data_fingerprint
    from .manifest import sha256_file

    if path is None:
        return None
    if path.is_dir():
        return data_fingerprint(path)
    return sha256_file(path) if path.is_file() else None


def _weights_digest(weights: str) -> str | None:
    """sha256 of the weights a fine-tune starts from, when they are a file (PATH) or a run (run:RUN, whose
    RUN/finetune/model.pt, or RUN itself being that folder); None for imagenet and none."""
    if weights in ("imagenet", "none"):
        return None
    if not weights.startswith("run:"):
        return _digest(Path(weights))
    folder = Path(weights[len("run:"):])
    return _digest((folder / "finetune" if (folder / "finetune").is_dir() else folder) / "model.pt")


class _Stamps:
    """``RUN/pipeline.json``: for each stage ``edge-tl run`` finished, its settings and the sha256 of its
    inputs and outputs. A stage is up to date when all three still match and its outputs' parent chain is
    fresh (``RunDir.check_fresh``); a stage run by hand in between changes its outputs' hashes."""

    def __init__(self, run: RunDir, force: bool, say: Callable[[str], None]) -> None:
        from .errors import ArtifactError
        from .manifest import read_json

        self.run, self.force, self.say = run, force, say
        self.file = run.root / STAMPS
        self.records: dict[str, Any] = {}
        if self.file.is_file():
            with contextlib.suppress(ArtifactError):  # unreadable: every stage runs and it is rewritten
                loaded = read_json(self.file)
                self.records = loaded if isinstance(loaded, dict) else {}

    def fresh(self, stage: str, settings: Any, inputs: dict[str, Any],
              folders: tuple[tuple[Path, str | None], ...] = ()) -> dict[str, Any] | None:
        """The stored record when ``stage`` is up to date (and says so), else None."""
        from .errors import ArtifactError
        from .manifest import sha256_file

        old = self.records.get(stage)
        if self.force or not isinstance(old, dict) or old.get("settings") != _plain(settings) \
                or old.get("inputs") != _plain(inputs):
            return None
        for name, digest in (old.get("outputs") or {}).items():
            if not Path(name).is_file() or sha256_file(name) != digest:
                return None
        try:
            for folder, ref in folders:
                self.run.check_fresh(folder, ref)
        except ArtifactError:
            return None
        self.say(f"skip {stage}: up to date (--force to redo)")
        return old

    def done(self, stage: str, settings: Any, inputs: dict[str, Any], outputs: list[Path], **extra: Any) -> None:
        from .manifest import sha256_file, write_json

        self.records[stage] = {"settings": _plain(settings), "inputs": _plain(inputs),
                               "outputs": {str(o): sha256_file(o) for o in outputs}, **_plain(extra)}
        write_json(self.file, self.records)


def _report_file(run: RunDir, report: dict[str, Any]) -> Path | None:
    """The JSON file ``bench`` wrote ``report`` to (the run's reports/, or a --data subfolder of it)."""
    from .errors import ArtifactError
    from .manifest import read_json

    name = report["target"]
    for f in [run.reports / f"{name}.json", *sorted(run.reports.glob(f"data-*/{name}.json"))]:
        with contextlib.suppress(ArtifactError):
            if f.is_file() and read_json(f).get("session") == _plain(report.get("session")):
                return f
    return None


def run_pipeline(path: Path, quiet: bool = False, force: bool = False,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]:
    """Run every stage the file names; returns the finetune manifest, the bench reports (the caller
    decides on failed gates) and the bundle's bundle.json (None without a bundle step).

    The whole file is checked first (``check_pipeline``). A stage whose outputs are up to date (the same
    settings, inputs and outputs as when this pipeline last made them, ``_Stamps``) is skipped with
    ``skip <stage>: up to date (--force to redo)``; ``force`` runs every stage again."""
    from .manifest import read_json, sha256_file
    from .stages.export import describe as describe_export

    p = check_pipeline(path)
    here = path.parent

    def rel(s: str) -> str:
        return str(_resolve(here, s))

    def rel_target(t: str) -> str:
        """A profile file is relative to the pipeline file too; a built-in target is a name."""
        return rel(t) if t.endswith(".toml") else t

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    ft = p.finetune
    run = rel(ft.out)
    rd = RunDir(Path(run))
    stamps = _Stamps(rd, force, say)
    if ft.weights in ("imagenet", "none"):
        weights = ft.weights
    elif ft.weights.startswith("run:"):  # run:PATH, PATH relative to the file like every other path
        weights = "run:" + rel(ft.weights[len("run:"):])
    else:
        weights = rel(ft.weights)
    # "val" only when given: an update marks the option as set, and a classifier's run refuses anomaly options
    resolved = ft.model_copy(update={"data": rel(ft.data), "out": run, "weights": weights,
                                     **({"val": rel(ft.val)} if ft.val else {})})
    settings = resolved.model_dump()
    inputs = {"data": _digest(Path(settings["data"])),
              "val": _digest(Path(settings["val"])) if ft.val else None, "weights": _weights_digest(weights)}
    if stamps.fresh("finetune", settings, inputs) is not None:
        tuned = read_json(rd.finetune / "manifest.json")
    else:
        with _as_keys(path, "finetune"):
            tuned = resolved.run(quiet)
        if tuned:  # only the main process of a distributed run writes
            stamps.done("finetune", settings, inputs, [rd.finetune / "manifest.json"])
    if p.prune is not None:
        pr = p.prune.model_copy(update={"device": p.prune.device or ft.device,
                                        "data": rel(p.prune.data) if p.prune.data else None})
        settings = pr.model_dump()
        inputs = {"finetune": sha256_file(rd.finetune / "model.pt")}
        if stamps.fresh("prune", settings, inputs, ((rd.prune, None),)) is None:
            with _as_keys(path, "prune"):
                pr.run(run, quiet)
            stamps.done("prune", settings, inputs, [rd.prune / "manifest.json"])
    exported: list[str] = []
    if p.export is not None:
        calibration = rel(p.export.calibration) if p.export.calibration else None
        ex = p.export.model_copy(update={"calibration": calibration,
                                         "data": rel(p.export.data) if p.export.data else None})
        for t in ex.targets:
            target = _target(path, "export.targets", t)
            source = ex.source or next((s for s in ("prune", "finetune") if (rd.root / s / "manifest.json").is_file()),
                                       "finetune")
            settings = ex.model_dump(exclude={"targets"}) | {"target": rel_target(t), "source": source,
                                                             "profile": target.model_dump()}
            folder = rd.target(target.name)
            inputs = {"source": _digest(rd.root / source / "model.pt"),
                      "calibration": _digest(Path(calibration)) if calibration else None}
            if stamps.fresh(f"export {target.name}", settings, inputs, ((folder, target.cli_ref),)) is None:
                with _as_keys(path, "export"):
                    made = ex.run(run, rel_target(t), quiet)
                for line in describe_export(made, folder):
                    say(line)
                stamps.done(f"export {target.name}", settings, inputs, [folder / "manifest.json"])
            exported.append(t)
    reports: list[dict[str, Any]] = []
    if p.bench is not None:
        reports = _bench(p.bench, rd, rel, rel_target, exported, stamps, quiet, path)
    shipped = None
    if p.bundle is not None:
        b = p.bundle.model_copy(update={"target": rel_target(p.bundle.target), "out": rel(p.bundle.out),
                                        "fallback": [rel_target(f) for f in p.bundle.fallback or []] or None})
        refs = [p.bundle.target, *(p.bundle.fallback or [])]
        targets = [_target(path, "bundle.target" if i == 0 else "bundle.fallback", r) for i, r in enumerate(refs)]
        settings = b.model_dump()
        # The targets and their bench verdicts (bundle refuses a failed one, or ships a fallback): a new bench
        # may change the answer.
        inputs = {f"{key}{t.name}": _digest(f) for t in targets
                  for key, f in (("target ", rd.target(t.name) / "manifest.json"),
                                 ("report ", rd.reports / f"{t.name}.json"))}
        out = Path(rel(b.out))
        failed = [r for t in targets for r in reports if r.get("target") == t.name and r.get("passed") is False]
        if len(failed) == len(targets) and not b.allow_failed:
            # The bench's verdict is the run's answer (exit 1, a gate failed), not a configuration error.
            log.warning("bundle skipped: %s; fix the model or set bundle.allow_failed = true",
                        "; ".join(f"{r['target']} failed its bench ("
                                  + ", ".join(g["name"] for g in r.get("gates") or [] if g.get("passed") is False)
                                  + ")" for r in failed))
        elif stamps.fresh("bundle", settings, inputs,
                          tuple((rd.target(t.name), t.cli_ref) for t in targets)) is not None:
            shipped = read_json(out / "bundle.json")
        else:
            with _as_keys(path, "bundle"):
                shipped = b.run(run, quiet)
            stamps.done("bundle", settings, inputs, [out / "bundle.json"])
    return tuned, reports, shipped


def _bench(bn: BenchSettings, rd: RunDir, rel: Callable[[str], str], rel_target: Callable[[str], str],
           exported: list[str], stamps: _Stamps, quiet: bool, path: Path) -> list[dict[str, Any]]:
    """The ``[bench]`` stage; an up-to-date bench returns the reports it wrote last time (a failed gate
    still fails the run)."""
    from .manifest import read_json
    from .targets import builtin_targets

    chosen = None if bn.all_targets else [rel_target(t) for t in (bn.targets or exported)]
    names = ([_target(path, "bench.targets", t).name for t in chosen] if chosen
             else sorted(builtin_targets()))
    resolved = bn.model_copy(update={"targets": chosen, "data": rel(bn.data) if bn.data else None,
                                     "json_path": rel(bn.json_path) if bn.json_path else None})
    settings = bn.model_dump(by_alias=True) | {"targets": chosen, "data": resolved.data}

    def inputs() -> dict[str, Any]:
        return {"data": _digest(Path(rel(bn.data))) if bn.data else None,
                **{f"target {n}": _digest(rd.target(n) / "manifest.json") for n in names}}

    folders = tuple((rd.target(n), None) for n in names)
    old = stamps.fresh("bench", settings, inputs(), folders)
    if old is not None:
        from .bench.schema import parse_report

        stored = [read_json(f) for f in old.get("reports", [])]
        for f, r in zip(old.get("reports", []), stored, strict=True):
            parse_report(r, f)  # a report edited since is named, not handed on
        return stored
    with _as_keys(path, "bench"):
        reports = resolved.run(rd.root, quiet)
    files = [_report_file(rd, r) for r in reports]
    if all(f is not None for f in files):  # else it runs again next time: nothing to hand back
        stamps.done("bench", settings, inputs(), [f for f in files if f is not None], reports=files)
    return reports
