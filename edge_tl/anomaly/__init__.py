"""Good-only anomaly detection (``finetune --task anomaly``): PatchCore and PaDiM on ImageNet features.

The built-in methods register themselves in :mod:`.methods` (default first); torch-free to import."""

from . import padim, patchcore  # noqa: F401
