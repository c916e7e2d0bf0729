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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .anomaly.methods import names as anomaly_methods
from .errors import ConfigError
from .rundir import RunDir

log = logging.getLogger(__name__)
# The anomaly methods registered when the package was imported: a new method needs no edit here.
AnomalyMethodName = Literal[anomaly_methods()]  # type: ignore[valid-type]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FinetuneStep(_Strict):
    """``[finetune]``: the options of ``edge-tl finetune`` (``data`` is DATA_DIR)."""

    data: str
    out: str
    arch: str = "mobilenet_v2"
    weights: str = "imagenet"
    mode: Literal["linear", "partial", "full"] = "linear"
    epochs: int | None = None
    unfreeze: int = 3
    progressive: bool = False
    lr: float | None = None
    backbone_lr_scale: float = 0.1
    batch_size: int = Field(32, ge=1)
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    workers: int = Field(2, ge=0)
    cache_mb: int = Field(2048, ge=0)
    patience: int = 5
    views: int = 2
    balance: Literal["none", "weights", "sampler"] = "none"
    resize: Literal["shorter", "full", "letterbox", "auto"] | None = None  # None: shorter; full for anomaly
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    input_size: int | None = Field(None, ge=32, le=1024)
    baseline: Literal["none", "scratch"] = "none"  # classify only
    # --task anomaly (good-only anomaly detection; ``data`` holds good images)
    task: Literal["classify", "anomaly"] = "classify"
    method: AnomalyMethodName = anomaly_methods()[0]  # the registered anomaly methods (anomaly.methods)
    val: str | None = None
    ok_class: str | None = None
    coreset: float = Field(0.01, gt=0, le=1)
    bank_size: int | None = Field(None, ge=1)
    dim: int | None = Field(None, ge=1)
    clusters: Literal["auto"] | Annotated[int, Field(ge=1, le=8)] = "auto"
    holdout: float | None = Field(None, ge=0, lt=1)
    max_false_reject: float | None = Field(None, gt=0, lt=1)


class PruneStep(_Strict):
    """``[prune]``: the options of ``edge-tl prune`` (``device`` defaults to the fine-tune's)."""

    ratio: float = Field(gt=0, lt=1)
    round_to: Literal[8, 16, 32] = 16
    recover: Literal["auto", "full", "partial", "head"] = "auto"
    recover_epochs: int | None = None
    importance: Literal["l2", "taylor"] = "l2"
    steps: int | None = Field(None, ge=1)
    device: str | None = None
    data: str | None = None  # the run's images moved here (`--data`)


class ExportStep(_Strict):
    """``[export]``: ``edge-tl export`` once per target (``source`` is ``--from``)."""

    targets: list[str]
    calibration: str | None = None
    source: Literal["finetune", "prune"] | None = None
    qat: int = Field(0, ge=0)
    ood: bool = True  # the ood_score output (`--no-ood` is ood = false)
    data: str | None = None  # the run's images moved here (`--data`)


class BenchStep(_Strict):
    """``[bench]``: the options of ``edge-tl bench`` (``json`` is ``--json``)."""

    targets: list[str] | None = None  # default: the exported ones
    all_targets: bool = False
    export: bool = False
    data: str | None = None
    layers: bool = False
    json_path: str | None = Field(None, alias="json")  # the TOML key is `json`, as the option
    wait_quiet: float = Field(0.0, ge=0)
    latency: bool = True  # time the models (`--no-latency` is latency = false: accuracy only)


class BundleStep(_Strict):
    """``[bundle]``: the options of ``edge-tl bundle`` (``ok_classes``/``defect_classes`` are the repeatable
    ``--ok-class``/``--defect-class``)."""

    target: str
    out: str
    golden: int = Field(8, ge=1)
    ok_classes: list[str] | None = None
    defect_classes: list[str] | None = None
    max_escape: float | None = Field(default=None, ge=0, lt=1)
    max_false_reject: float | None = Field(default=None, ge=0, lt=1)
    ok_threshold: float | None = Field(default=None, ge=0, le=1)
    defect_threshold: float = Field(0.5, ge=0, le=1)
    ood_limit: float | None = Field(default=None, gt=0)
    ood: bool = True  # review out-of-distribution images (`--no-ood` is ood = false)
    allow_failed: bool = False  # ship a target whose bench failed, or that has none (recorded in bundle.json)


class Pipeline(_Strict):
    finetune: FinetuneStep
    prune: PruneStep | None = None
    export: ExportStep | None = None
    bench: BenchStep | None = None
    bundle: BundleStep | None = None


# CLI options with no pipeline key, and why (tests/test_cli_conventions.py checks every other option of
# these commands is a key of its table, and docs/pipeline.md documents every key).
CLI_ONLY = {
    "finetune": {"quiet": "`edge-tl run --quiet` covers every stage"},
    "prune": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "export": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "bench": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
    "bundle": {"run": "the run is [finetune] out", "quiet": "`edge-tl run --quiet`"},
}
# CLI option name -> pipeline key, where they differ.
CLI_TO_KEY = {
    "finetune": {"data_dir": "data"},
    "export": {"target": "targets", "from_": "source", "no_ood": "ood"},
    "bench": {"target": "targets", "json_path": "json", "no_latency": "latency"},
    "bundle": {"ok_class": "ok_classes", "defect_class": "defect_classes", "no_ood": "ood"},
}
STEPS: dict[str, type[_Strict]] = {"finetune": FinetuneStep, "prune": PruneStep, "export": ExportStep,
                                  "bench": BenchStep, "bundle": BundleStep}


def step_keys(step: str) -> list[str]:
    """The TOML keys of one table, in order (aliases as written in the file)."""
    return [f.alias or name for name, f in STEPS[step].model_fields.items()]


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
        name = _target(path, "bundle.target", b.target).name
        if name not in exported and not (run / "targets" / name / "manifest.json").is_file():
            raise fail("bundle.target", f"{name} is neither one of [export] targets nor exported in {run}")
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


def _check_policy(b: BundleStep, classes: list[str], given: list[str],
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
            name = m.group(1).replace("-", "_")
            name = CLI_TO_KEY.get(table, {}).get(name, name)
            return f"{table}.{name}" if name in step_keys(table) else m.group(0)

        msg = re.sub(r"--([a-z][a-z0-9-]*)", key, str(exc))
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
    from .stages.export import export

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
    settings = ft.model_dump() | {"data": rel(ft.data), "out": run, "weights": weights,
                                  "val": rel(ft.val) if ft.val else None}
    inputs = {"data": _digest(Path(settings["data"])),
              "val": _digest(Path(settings["val"])) if ft.val else None, "weights": _weights_digest(weights)}
    if stamps.fresh("finetune", settings, inputs) is not None:
        tuned = read_json(rd.finetune / "manifest.json")
    else:
        with _as_keys(path, "finetune"):
            tuned = _finetune(ft, run, weights, rel, quiet)
        if tuned:  # only the main process of a distributed run writes
            stamps.done("finetune", settings, inputs, [rd.finetune / "manifest.json"])
    if p.prune is not None:
        from .stages.prune import prune

        pr = p.prune
        settings = pr.model_dump() | {"device": pr.device or ft.device, "data": rel(pr.data) if pr.data else None}
        inputs = {"finetune": sha256_file(rd.finetune / "model.pt")}
        if stamps.fresh("prune", settings, inputs, ((rd.prune, None),)) is None:
            with _as_keys(path, "prune"):
                prune(run, pr.ratio, recover_epochs=pr.recover_epochs, quiet=quiet, recover=pr.recover,
                      device=pr.device or ft.device, importance=pr.importance, steps=pr.steps, round_to=pr.round_to,
                      data=rel(pr.data) if pr.data else None)
            stamps.done("prune", settings, inputs, [rd.prune / "manifest.json"])
    exported: list[str] = []
    if p.export is not None:
        ex = p.export
        calibration = rel(ex.calibration) if ex.calibration else None
        for t in ex.targets:
            target = _target(path, "export.targets", t)
            source = ex.source or next((s for s in ("prune", "finetune") if (rd.root / s / "manifest.json").is_file()),
                                       "finetune")
            settings = ex.model_dump(exclude={"targets"}) | {"target": rel_target(t), "source": source,
                                                             "profile": target.model_dump(),
                                                             "calibration": calibration,
                                                             "data": rel(ex.data) if ex.data else None}
            folder = rd.target(target.name)
            inputs = {"source": _digest(rd.root / source / "model.pt"),
                      "calibration": _digest(Path(calibration)) if calibration else None}
            if stamps.fresh(f"export {target.name}", settings, inputs, ((folder, target.cli_ref),)) is None:
                with _as_keys(path, "export"):
                    made = export(run, rel_target(t), calibration=calibration, source=ex.source, quiet=quiet,
                                  qat_epochs=ex.qat, ood=ex.ood, data=rel(ex.data) if ex.data else None)
                for line in describe_export(made, folder):
                    say(line)
                stamps.done(f"export {target.name}", settings, inputs, [folder / "manifest.json"])
            exported.append(t)
    reports: list[dict[str, Any]] = []
    if p.bench is not None:
        reports = _bench(p.bench, rd, rel, rel_target, exported, stamps, quiet, path)
    shipped = None
    if p.bundle is not None:
        from .stages.bundle import bundle

        b = p.bundle
        target = _target(path, "bundle.target", b.target)
        settings = b.model_dump() | {"target": rel_target(b.target), "out": rel(b.out)}
        folder = rd.target(target.name)
        # The target and its bench verdict (bundle refuses a failed one): a new bench may change the answer.
        inputs = {"target": _digest(folder / "manifest.json"), "report": _digest(rd.reports / f"{target.name}.json")}
        out = Path(rel(b.out))
        failed = next((r for r in reports if r.get("target") == target.name and r.get("passed") is False), None)
        if failed is not None and not b.allow_failed:
            # The bench's verdict is the run's answer (exit 1, a gate failed), not a configuration error.
            log.warning("bundle skipped: %s failed its bench (%s); fix the model or set bundle.allow_failed = true",
                        target.name, ", ".join(g["name"] for g in failed.get("gates") or []
                                               if g.get("passed") is False))
        elif stamps.fresh("bundle", settings, inputs, ((folder, target.cli_ref),)) is not None:
            shipped = read_json(out / "bundle.json")
        else:
            with _as_keys(path, "bundle"):
                shipped = bundle(run, rel_target(b.target), out, n_golden=b.golden, ok_classes=b.ok_classes,
                                 defect_classes=b.defect_classes, max_escape=b.max_escape,
                                 max_false_reject=b.max_false_reject, ok_threshold=b.ok_threshold,
                                 defect_threshold=b.defect_threshold, ood_limit=b.ood_limit, use_ood=b.ood,
                                 allow_failed=b.allow_failed, quiet=quiet)
            stamps.done("bundle", settings, inputs, [out / "bundle.json"])
    return tuned, reports, shipped


def _finetune(ft: FinetuneStep, run: str, weights: str, rel: Callable[[str], str], quiet: bool) -> dict[str, Any]:
    """The ``[finetune]`` stage of either task (``stages.finetune.fit_task`` makes the choice)."""
    from .tasks import fit_task, fit_task_options

    return fit_task(rel(ft.data), run, **fit_task_options(
        ft.model_dump() | {"weights": weights, "quiet": quiet, "val": rel(ft.val) if ft.val else None}))


def _bench(bn: BenchStep, rd: RunDir, rel: Callable[[str], str], rel_target: Callable[[str], str],
           exported: list[str], stamps: _Stamps, quiet: bool, path: Path) -> list[dict[str, Any]]:
    """The ``[bench]`` stage; an up-to-date bench returns the reports it wrote last time (a failed gate
    still fails the run)."""
    from .manifest import read_json
    from .orchestrate import bench
    from .targets import builtin_targets

    chosen = None if bn.all_targets else [rel_target(t) for t in (bn.targets or exported)]
    names = ([_target(path, "bench.targets", t).name for t in chosen] if chosen
             else sorted(builtin_targets()))
    settings = bn.model_dump(by_alias=True) | {"targets": chosen, "data": rel(bn.data) if bn.data else None}

    def inputs() -> dict[str, Any]:
        return {"data": _digest(Path(rel(bn.data))) if bn.data else None,
                **{f"target {n}": _digest(rd.target(n) / "manifest.json") for n in names}}

    folders = tuple((rd.target(n), None) for n in names)
    old = stamps.fresh("bench", settings, inputs(), folders)
    if old is not None:
        return [read_json(f) for f in old.get("reports", [])]
    options: dict[str, Any] = {}  # only what differs from bench()'s defaults
    if bn.export:
        options["export"] = True
    if bn.layers:
        options["layers"] = True
    if not bn.latency:
        options["latency"] = False
    with _as_keys(path, "bench"):
        reports = bench(rd.root, chosen, data=rel(bn.data) if bn.data else None, quiet=quiet,
                        json_path=rel(bn.json_path) if bn.json_path else None, wait_quiet=bn.wait_quiet, **options)
    files = [_report_file(rd, r) for r in reports]
    if all(f is not None for f in files):  # else it runs again next time: nothing to hand back
        stamps.done("bench", settings, inputs(), [f for f in files if f is not None], reports=files)
    return reports
