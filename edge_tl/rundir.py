"""Paths inside a run directory (see design.md): one place that knows the layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

    def check_fresh(self, folder: Path) -> None:
        """ArtifactError when the model in ``folder`` was made from a parent model in this run that has
        since been replaced (a prune or adapt of an older fine-tune): exporting it would ship a model the
        newer fine-tune's eval set, policy and reports do not describe. Walks the chain to finetune."""
        from .manifest import read_json, sha256_file

        while folder.name != "finetune":
            parent = read_json(folder / MANIFEST).get("parent") or {}
            stage = Path(parent.get("path", "")).parent.name
            current = self.root / stage / "model.pt"
            if stage not in MODEL_STAGES or not current.is_file():
                return  # made from a model outside this run (or one since removed): nothing to compare
            if sha256_file(current) != parent.get("sha256"):
                raise ArtifactError(f"{folder} was made from an older {stage} model than {current}; run "
                                    f"`{MODEL_STAGES[folder.name]} {self.root}` again first")
            folder = self.root / stage

    def require_finetune(self) -> Path:
        if not (self.finetune / MANIFEST).is_file():
            raise ArtifactError(f"{self.root} has no finished fine-tune ({self.finetune / MANIFEST} missing)")
        return self.finetune
