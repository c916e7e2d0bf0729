"""The QC decision policy that travels in a bundle, and its tuning on the validation set (numpy only).

Rule (also written into every bundle as ``policy.rule``)::

    label    = argmax(logits)
    score    = softmax(logits)[label]
    decision = "ok"     if label is an ok class     and score >= ok_threshold
               "defect" if label is a defect class  and score >= defect_threshold
               "review" otherwise

So the label a person sees always agrees with the decision (an "ok" label is never scrapped, a
"defect" label is never passed), and a low-confidence answer goes to a person, never to the scrap
bin. Every class is either an ok class or a defect class.

Default split of classes: a class named like ``ok``/``good``/``pass``/``normal``/``no_defect`` is an ok
class, every other class is a defect class. For NEU (six defect *types*, no good class) that makes
every class a defect: decisions are ``defect`` (with its type) or ``review``. For elpv (``defect``
vs ``ok``) it gives the usual pass/fail.

Tuning: a *false reject* is a good part that is not passed automatically (decision ``defect`` or
``review``). ``tune_ok_threshold`` picks the highest ok threshold whose false-reject rate on the
validation images is within the target: the strictest pass rule the target allows, so as few
defects as possible escape as ``ok``. The validation split also chose the training epoch, so the
rates it gives are optimistic; the bundle records them with ``n`` so nobody mistakes them for a
line measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

RULE = ("label = argmax(logits); score = softmax(logits)[label]; decision = 'ok' if label is an ok class "
        "and score >= ok_threshold, 'defect' if label is a defect class and score >= defect_threshold, "
        "otherwise 'review'")
DECISIONS = ("ok", "defect", "review")
OK_NAMES = frozenset({"ok", "good", "pass", "passed", "normal", "no_defect", "nodefect", "no-defect",
                      "defect_free", "defect-free", "clean", "non_defective", "non-defective"})


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Policy:
    """Which classes pass, which are defects, and the confidence each decision needs."""

    classes: tuple[str, ...]
    ok_classes: tuple[str, ...]
    defect_classes: tuple[str, ...]
    ok_threshold: float = 0.5
    defect_threshold: float = 0.5

    def __post_init__(self) -> None:
        both = set(self.ok_classes) & set(self.defect_classes)
        if both:
            raise ConfigError(f"class(es) {', '.join(sorted(both))} cannot be both ok and defect")
        missing = set(self.classes) - set(self.ok_classes) - set(self.defect_classes)
        if missing:
            raise ConfigError(f"class(es) {', '.join(sorted(missing))} are neither ok nor defect")
        for name in ("ok_threshold", "defect_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")

    def decide(self, label: str, score: float) -> str:
        """``ok``, ``defect`` or ``review`` for one answer."""
        if label in self.ok_classes:
            return "ok" if score >= self.ok_threshold else "review"
        return "defect" if score >= self.defect_threshold else "review"

    def decide_logits(self, logits: np.ndarray) -> list[tuple[int, float, str]]:
        """(class index, score, decision) for each row of ``logits``."""
        probs = softmax(np.atleast_2d(logits))
        idx = probs.argmax(axis=1)
        out = []
        for i, k in enumerate(idx):
            score = float(probs[i, k])
            out.append((int(k), score, self.decide(self.classes[k], score)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rule": RULE, "ok_classes": list(self.ok_classes),
                "defect_classes": list(self.defect_classes), "ok_threshold": float(self.ok_threshold),
                "defect_threshold": float(self.defect_threshold)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], classes: Sequence[str]) -> Policy:
        return cls(tuple(classes), tuple(d["ok_classes"]), tuple(d["defect_classes"]),
                   float(d["ok_threshold"]), float(d["defect_threshold"]))


def make_policy(classes: Sequence[str], ok_classes: Sequence[str] | None = None,
                defect_classes: Sequence[str] | None = None, ok_threshold: float = 0.5,
                defect_threshold: float = 0.5) -> Policy:
    """A policy from the user's class lists; either list implies the other, neither uses the default split."""
    classes = tuple(classes)
    for given in (ok_classes or ()), (defect_classes or ()):
        unknown = [c for c in given if c not in classes]
        if unknown:
            raise ConfigError(f"unknown class(es) {', '.join(unknown)}; the model's classes are "
                              f"{', '.join(classes)}")
    if ok_classes and defect_classes:
        ok, defect = tuple(ok_classes), tuple(defect_classes)
    elif ok_classes:
        ok = tuple(c for c in classes if c in ok_classes)
        defect = tuple(c for c in classes if c not in ok)
    elif defect_classes:
        defect = tuple(c for c in classes if c in defect_classes)
        ok = tuple(c for c in classes if c not in defect)
    else:
        ok = tuple(c for c in classes if c.lower() in OK_NAMES)
        defect = tuple(c for c in classes if c not in ok)
    if not defect:
        raise ConfigError("every class is an ok class: name the defect classes with --defect-class")
    return Policy(classes, ok, defect, ok_threshold, defect_threshold)


def policy_stats(policy: Policy, logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What the policy does on labelled images: false rejects, escapes, review rate, wrong labels."""
    labels = np.asarray(labels, dtype=np.int64)
    decided = policy.decide_logits(logits) if len(labels) else []
    ok_idx = [policy.classes.index(c) for c in policy.ok_classes]
    true_ok = np.isin(labels, ok_idx)
    decisions = np.array([d for _, _, d in decided], dtype="<U6")
    preds = np.array([k for k, _, _ in decided], dtype=np.int64)
    auto = decisions != "review"
    n_ok, n_defect = int(true_ok.sum()), int((~true_ok).sum())

    def rate(mask: np.ndarray, den: int) -> float | None:
        return int(mask.sum()) / den if den else None

    return {
        "n": len(labels), "n_ok": n_ok, "n_defect": n_defect,
        "false_reject_rate": rate(true_ok & (decisions != "ok"), n_ok),
        "escape_rate": rate(~true_ok & (decisions == "ok"), n_defect),
        "review_rate": rate(decisions == "review", len(labels)),
        "wrong_label_rate_of_automatic": rate(auto & (preds != labels), int(auto.sum())),
    }


def tune_ok_threshold(policy: Policy, logits: np.ndarray, labels: np.ndarray,
                      max_false_reject: float) -> tuple[Policy, dict[str, Any]]:
    """The highest ok threshold whose false-reject rate on (logits, labels) is <= ``max_false_reject``.

    Returns the tuned policy and a record of the tuning (target, achieved rates, whether the target
    was reachable). When the model already sends more good parts to ``defect`` than the target
    allows, no threshold helps: every ok-labelled answer passes and ``target_met`` is False.
    """
    if not policy.ok_classes:
        raise ConfigError("--max-false-reject needs an ok class (a false reject is a good part not passed); "
                          "name it with --ok-class")
    if not 0.0 <= max_false_reject < 1.0:
        raise ConfigError(f"--max-false-reject must be in [0, 1), got {max_false_reject}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    ok_idx = np.array([policy.classes.index(c) for c in policy.ok_classes])
    true_ok = np.isin(labels, ok_idx)
    n_ok = int(true_ok.sum())
    if n_ok == 0:
        raise ConfigError("the validation set has no image of an ok class: cannot tune --max-false-reject")
    labelled_ok = true_ok & np.isin(preds, ok_idx)
    # Good parts the model calls a defect are rejected whatever the ok threshold is.
    forced = n_ok - int(labelled_ok.sum())
    allowed = int(np.floor(max_false_reject * n_ok + 1e-9)) - forced
    scores = np.sort(probs[labelled_ok, preds[labelled_ok]])
    if allowed < 0 or len(scores) == 0:
        threshold, met = 0.0, False
    else:
        # Reject the `allowed` least confident good parts: those strictly below scores[allowed].
        threshold, met = (float(scores[allowed]) if allowed < len(scores) else 1.0), True
    tuned = Policy(policy.classes, policy.ok_classes, policy.defect_classes, threshold,
                   policy.defect_threshold)
    record = {"target_false_reject": max_false_reject, "target_met": met, "n_ok": n_ok,
              "ok_images_labelled_defect": forced, **policy_stats(tuned, logits, labels)}
    return tuned, record
