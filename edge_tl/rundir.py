"""Paths inside a run directory (see design.md): one place that knows the layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, ConfigError
from .manifest import MANIFEST


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
    def eval_npz(self) -> Path:
        return self.root / "eval.npz"

    def target(self, name: str) -> Path:
        return self.root / "targets" / name

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def source(self, which: str | None = None) -> Path:
        """The torch stage to export from: ``finetune``, ``prune``, or (None) prune when present."""
        if which not in (None, "finetune", "prune"):
            raise ConfigError(f"--from must be finetune or prune, got {which!r}")
        if which is None:
            which = "prune" if (self.prune / MANIFEST).is_file() else "finetune"
        folder = self.prune if which == "prune" else self.finetune
        if not (folder / MANIFEST).is_file():
            hint = "edge-tl prune" if which == "prune" else "edge-tl finetune"
            raise ArtifactError(f"{folder} has no finished model; run `{hint}` first")
        return folder

    def require_finetune(self) -> Path:
        if not (self.finetune / MANIFEST).is_file():
            raise ArtifactError(f"{self.root} has no finished fine-tune ({self.finetune / MANIFEST} missing)")
        return self.finetune
