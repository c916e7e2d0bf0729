"""One gate evaluator: measured values and a target's limits in, verdicts out.

Export's accuracy fallback (``stages.quantize.fallback.gate_values``) and ``bench`` both judge with
:func:`verdicts`, so they agree to the last digit on the same numbers. A ``max_*`` gate passes when the
value is at most the limit, a ``min_*`` gate when it is at least the limit, both within ``TOLERANCE``
(float noise: a top-1 drop of exactly the limit computed as ``(0.994 - 0.984) * 100`` still passes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

TOLERANCE = 1e-9
NOT_MEASURED = "not measured"


def passes(name: str, value: float, limit: float) -> bool:
    """Whether ``value`` meets the gate ``name`` (``min_*`` or ``max_*``) at ``limit``."""
    if name.startswith("min_"):
        return bool(value >= limit - TOLERANCE)
    return bool(value <= limit + TOLERANCE)


def verdicts(limits: Mapping[str, float | None], values: Mapping[str, float | None],
             not_measured: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Each gate of ``limits`` (None: no gate) that ``values`` names, judged: ``{name, limit, value,
    passed}``. A gate named in ``not_measured`` (latency under ``--no-latency``) is listed with
    ``passed: None`` and ``status: "not measured"``: neither passed nor failed. A gate missing from
    ``values`` (a gate of the other task) is left out; a value of None fails its gate."""
    skipped = set(not_measured)
    out: list[dict[str, Any]] = []
    for name, limit in limits.items():
        if limit is None or name not in values:
            continue
        if name in skipped:
            out.append({"name": name, "limit": limit, "value": None, "passed": None, "status": NOT_MEASURED})
            continue
        value = values[name]
        out.append({"name": name, "limit": limit, "value": value,
                    "passed": value is not None and passes(name, value, limit)})
    return out


def all_passed(gates: list[dict[str, Any]]) -> bool:
    """True when no measured gate failed (a gate not measured counts neither way)."""
    return all(g["passed"] is not False for g in gates)


def failed_text(report: Mapping[str, Any]) -> str:
    """A failed report in one phrase, naming each failed gate with its value and limit:
    ``"cpu-openvino-int8 (max_top1_drop 5.00 > 2; min_agreement 0.9500 < 0.98)"``; a target that failed
    before any gate (its export) names that reason instead."""
    failed = [g for g in report.get("gates") or [] if g.get("passed") is False]
    if not failed:
        why = report.get("skipped") or "failed"
        return f"{report.get('target', '?')} ({why})"

    def one(g: Mapping[str, Any]) -> str:
        if g.get("value") is None:
            return f"{g['name']} not computed"
        op = "<" if str(g["name"]).startswith("min_") else ">"
        return f"{g['name']} {g['value']:.4g} {op} {g['limit']:g}"

    return f"{report.get('target', '?')} ({'; '.join(one(g) for g in failed)})"
