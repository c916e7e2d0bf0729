"""Good-only anomaly detection (``finetune --task anomaly``): PatchCore and PaDiM on ImageNet features."""
