"""Paths inside a run directory (see design.md): one place that knows the layout."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ConfigError
from .manifest import MANIFEST

# The stages that hold a torch classification model, each with the command that writes it: the one
# list of what `export --from` accepts (adapt reads the first two). Each folder is RUN/<stage>.
MODEL_STAGES: dict[str, str] = {"finetune": "edge-tl finetune", "prune": "edge-tl prune", "adapt": "edge-tl adapt"}
# What --from means when it is not given: prune when present, else finetune. Never adapt: an adapted
# model is meant for another line or camera than the labelled one, so it ships only when asked for.
DEFAULT_SOURCES = ("prune", "finetune")


@dataclass(frozen=True)
class RunDir:
    """``runs/<name>/`` and the artifacts inside it."""

    root: Path
    # Where the fine-tune's images are now when they moved (``--data``); None: split.json's own folder.
    data: Path | None = None

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def prune(self) -> Path:
        return self.root / "prune"

    @property
    def adapt(self) -> Path:
        return self.root / "adapt"

    @property
    def eval_npz(self) -> Path:
        return self.root / "eval.npz"

    def target(self, name: str) -> Path:
        return self.root / "targets" / name

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def source(self, which: str | None = None, stages: tuple[str, ...] | None = None) -> Path:
        """The torch stage to export (or adapt) from: one of ``stages`` (default: every one of
        ``MODEL_STAGES``), or (None) the first of ``DEFAULT_SOURCES`` that is present."""
        stages = stages or tuple(MODEL_STAGES)
        if which not in (None, *stages):
            choices = f"{', '.join(stages[:-1])} or {stages[-1]}" if len(stages) > 1 else stages[0]
            raise ConfigError(f"--from must be {choices}, got {which!r}")
        if which is None:
            which = next((s for s in DEFAULT_SOURCES if s in stages and (self.root / s / MANIFEST).is_file()),
                         "finetune")
        folder = self.root / which
        if not (folder / MANIFEST).is_file():
            raise ArtifactError(f"{folder} has no finished model; run `{MODEL_STAGES[which]}` first")
        self.check_fresh(folder)
        return folder

    def check_fresh(self, folder: Path, target_ref: str | None = None) -> None:
        """ArtifactError when ``folder`` was made, directly or through its parents, from a model in this
        run that has since been replaced: a prune or adapt of an older fine-tune, or an exported target
        (``RUN/targets/T``, whose parent is the model.pt it was exported from) of an older fine-tune,
        prune or adapt. Exporting, benching or bundling it would ship a model the newer fine-tune's eval
        set, policy and reports do not describe. Walks the parent chain to finetune; the error names the
        commands that remake each stale folder, in order. ``target_ref``: what ``--target`` takes for a
        target folder (a user's profile file; default: the folder's name). A folder with no manifest
        (not made yet) has nothing to check."""
        from .manifest import read_json, sha256_file

        chain = [folder]  # ``folder`` and the parents walked so far, child first
        while folder.name != "finetune" and (folder / MANIFEST).is_file():
            parent = read_json(folder / MANIFEST).get("parent") or {}
            stage = Path(parent.get("path", "")).parent.name
            current = self.root / stage / "model.pt"
            if stage not in MODEL_STAGES or not current.is_file():
                return  # made from a model outside this run (or one since removed): nothing to compare
            if sha256_file(current) != parent.get("sha256"):
                through = f" (through {folder})" if folder != chain[0] else ""
                redo = " then ".join(f"`{self._remake(f, target_ref)}`" for f in reversed(chain))
                raise ArtifactError(f"{chain[0]} was made from an older {stage} model than {current}{through}; "
                                    f"run {redo} first")
            folder = self.root / stage
            chain.append(folder)

    def _remake(self, folder: Path, target_ref: str | None) -> str:
        """The command that writes ``folder`` again: a model stage's, or export for a target folder."""
        import shlex

        from .manifest import read_json

        if folder.parent.name != "targets":
            return f"{MODEL_STAGES[folder.name]} {shlex.quote(str(self.root))}"
        words = ["edge-tl", "export", str(self.root), "--target", target_ref or folder.name]
        made_from = read_json(folder / MANIFEST).get("source_stage")
        default = next((s for s in DEFAULT_SOURCES if (self.root / s / MANIFEST).is_file()), "finetune")
        if made_from in MODEL_STAGES and made_from != default:  # keep the stage it was exported from
            words += ["--from", made_from]
        return " ".join(shlex.quote(w) for w in words)

    def split(self) -> tuple[Path, list[Any], list[Any]]:
        """The fine-tune's split as (image folder, training samples, validation samples) whose files are
        present: under split.json's folder, or under ``data`` where the images moved, checked once per
        process against split.json's sha256 (``data.locate_split``: DataError naming ``--data`` when most
        are missing or one differs; a few missing ones are left out with a warning)."""
        from .data import locate_split
        from .manifest import read_json

        path = self.finetune / "split.json"
        if self.data is None:  # presence only: cheap, and never stale within a process
            images = locate_split(read_json(path), None, origin=str(path))
        else:
            images = _located(str(path), path.stat().st_mtime_ns, str(self.data))
        return images.root, images.train, images.val

    def require_finetune(self) -> Path:
        if not (self.finetune / MANIFEST).is_file():
            raise ArtifactError(f"{self.root} has no finished fine-tune ({self.finetune / MANIFEST} missing)")
        return self.finetune


@functools.lru_cache(maxsize=8)
def _located(split_path: str, mtime_ns: int, data: str) -> Any:
    """``data.locate_split`` once per split.json version and folder: export reads the split four times
    (calibration, selection, eval set, OOD fit) and the sha256 check reads every image."""
    from .data import locate_split
    from .manifest import read_json

    return locate_split(read_json(split_path), data, origin=split_path)
