"""The parts of an exported graph that no quantiser may touch, named from the graph's outputs.

Every quantiser (``stages.quantize``) keeps them float and ``bench`` reports them as "float by design":
both read this one list.
"""

from __future__ import annotations

from .ood import OOD_OUTPUT, OOD_SCOPE

# An anomaly graph (``anomaly.model``) quantises its backbone only: the nearest-neighbour distances
# ‖a‖² − 2a·b + ‖b‖² subtract large, nearly equal terms, and with the bank in 8 bits every decision of
# the synthetic test set's model flipped (agreement 0.5 at any fallback). Nodes outside the backbone
# stages (``/features/to8/``, ``/features/to16/``: aggregation, projection, distances) stay float on every
# backend. Keeping the last block of each stage float too was measured and dropped: on elpv (PaDiM,
# OpenVINO) decision agreement 0.958 -> 0.959, the error builds up over the whole backbone. Other
# NNCF settings on the same model (benchmarks/anomaly_int8_noise.py; agreement with torch on 636
# held-out cells): the export's 0.965, mixed preset 0.953, min/max ranges 0.967, mean-quantile ranges
# 0.928, the whole stride-16 stage float 0.978. None reaches 0.99: INT8 moves a score by a median 2 %
# of the threshold, and about 3 % of elpv cells score that close to it.
ANOMALY_OUTPUT = "anomaly_map"
BACKBONE_STAGES = ("/features/to8/", "/features/to16/")


def anomaly_float_names(names: list[str]) -> list[str]:
    """Of an anomaly graph's node names, those that stay float (see above)."""
    return [n for n in names if not n.startswith(BACKBONE_STAGES)]


def float_names(outputs: set[str], names: list[str]) -> list[str]:
    """Of a graph's node names, those no quantiser may touch, from the graph's ``outputs``:

    - an anomaly graph's distance part (see above);
    - a classifier's out-of-distribution score (``edge_tl/ood.py``, nodes under ``/ood/``): a Mahalanobis
      distance is a difference of nearly equal large terms, the same hazard as the anomaly distances. The
      pooled features it reads may be quantised (the head reads them too).
    """
    if ANOMALY_OUTPUT in outputs:
        return anomaly_float_names(names)
    if OOD_OUTPUT in outputs:
        return [n for n in names if n.startswith(OOD_SCOPE)]
    return []
