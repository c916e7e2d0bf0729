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
defects as possible escape as ``ok``. A target counts as met only when the one-sided 95 %
Clopper-Pearson upper bound of the tuned rate on those ``n`` images is within it (``rate_upper_bound``);
with too few images to show that, the stated default threshold stays. The validation split also chose
the training epoch, so the rates it gives are optimistic; the bundle records them with ``n`` and
their upper bound so nobody mistakes them for a line measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

RULE = ("label = argmax(logits); score = softmax(logits)[label]; decision = 'ok' if label is an ok class "
        "and score >= ok_threshold, 'defect' if label is a defect class and score >= defect_threshold, "
        "otherwise 'review'; with an ood_limit, an image whose ood_score exceeds it is 'review' whatever its "
        "label (reason out_of_distribution); with a noise_margin v > 0 (an INT8 bundle: its target's measured "
        "answer noise, in logits), an answer is acted on only when its top-1 logit beats the runner-up by more "
        "than v and its score with the top-1 logit lowered by v still meets the threshold, otherwise 'review'")
REASONS = ("low_confidence", "out_of_distribution")
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
    # The model's ood_score (1.0 = its calibrated threshold, see edge_tl/ood.py) above which an image goes
    # to review; None: not used (no ood output, or switched off at bundle time).
    ood_limit: float | None = None
    # The review band's widening for the target's answer noise (logits; ``edge_tl.metrics.answer_noise``
    # of an INT8 graph against the full model, 0 for fp32): see ``guarded_scores``.
    noise_margin: float = 0.0

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
        if self.ood_limit is not None and not self.ood_limit > 0:
            raise ConfigError(f"the ood limit must be above 0, got {self.ood_limit}")
        if not self.noise_margin >= 0:
            raise ConfigError(f"the noise margin must be at least 0, got {self.noise_margin}")

    def guarded_scores(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class index, score, score the thresholds judge) per row of ``logits`` (N, C).

        The judged score is the softmax score of the top-1 class with its logit lowered by
        ``noise_margin`` v, or -1 (never acted on) when the top-1 logit beats the runner-up by v or less.
        Why: when no top-1-minus-other logit difference moves by more than v between this graph and the
        full fp32 model, the full model gives the same label with a score at least the judged one (the
        softmax score rises with each such difference), so every answer acted on here is one the fp32 policy
        acts on alike: an INT8 bundle never turns a confident ``ok`` into ``defect``, nor a fp32 ``review``
        into a decision. v = 0: the judged score is the score."""
        z = np.asarray(np.atleast_2d(logits), dtype=np.float64)
        probs = softmax(z)
        idx = probs.argmax(axis=1)
        rows = np.arange(len(z))
        score = probs[rows, idx]
        if self.noise_margin <= 0 or z.shape[1] < 2:
            return idx, score, score
        lowered = z.copy()
        lowered[rows, idx] -= self.noise_margin
        judged = softmax(lowered)[rows, idx]
        others = z.copy()
        others[rows, idx] = -np.inf
        near = z[rows, idx] - others.max(axis=1) <= self.noise_margin
        return idx, score, np.where(near, -1.0, judged)

    def out_of_distribution(self, ood: float | None) -> bool:
        return self.ood_limit is not None and ood is not None and ood > self.ood_limit

    def decide(self, label: str, score: float, ood: float | None = None) -> str:
        """``ok``, ``defect`` or ``review`` for one answer (``ood``: its ood_score, if the model has one)."""
        if self.out_of_distribution(ood):
            return "review"
        if label in self.ok_classes:
            return "ok" if score >= self.ok_threshold else "review"
        return "defect" if score >= self.defect_threshold else "review"

    def reason(self, decision: str, ood: float | None = None) -> str | None:
        """Why an answer goes to review (``REASONS``); None for ``ok``/``defect``."""
        if decision != "review":
            return None
        return "out_of_distribution" if self.out_of_distribution(ood) else "low_confidence"

    def decide_logits(self, logits: np.ndarray, ood: np.ndarray | None = None) -> list[tuple[int, float, str]]:
        """(class index, score, decision) for each row of ``logits`` (``ood``: (N,) ood_score, optional);
        the thresholds judge the noise-guarded score (``guarded_scores``)."""
        idx, scores, judged = self.guarded_scores(logits)
        out = []
        for i, k in enumerate(idx):
            o = None if ood is None else float(ood[i])
            out.append((int(k), float(scores[i]), self.decide(self.classes[k], float(judged[i]), o)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rule": RULE, "ok_classes": list(self.ok_classes),
                "defect_classes": list(self.defect_classes), "ok_threshold": float(self.ok_threshold),
                "defect_threshold": float(self.defect_threshold), "ood_limit": self.ood_limit,
                "noise_margin": float(self.noise_margin)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], classes: Sequence[str]) -> Policy:
        limit = d.get("ood_limit")
        return cls(tuple(classes), tuple(d["ok_classes"]), tuple(d["defect_classes"]),
                   float(d["ok_threshold"]), float(d["defect_threshold"]),
                   None if limit is None else float(limit), float(d.get("noise_margin") or 0.0))


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


def policy_stats(policy: Policy, logits: np.ndarray, labels: np.ndarray,
                 ood: np.ndarray | None = None) -> dict[str, Any]:
    """What the policy does on labelled images: false rejects, escapes, review rate (and the share reviewed
    as out of distribution, given ``ood``), wrong labels."""
    labels = np.asarray(labels, dtype=np.int64)
    decided = policy.decide_logits(logits, ood) if len(labels) else []
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
        **({"out_of_distribution_rate": rate(np.asarray(ood) > policy.ood_limit, len(labels))}
           if ood is not None and policy.ood_limit is not None else {}),
    }


# A rate measured on n images is a claim about new parts only up to its sampling error: 0 false rejects
# in 1 good image says nothing about a 1 % target. Tuning therefore claims a target only when the
# one-sided Clopper-Pearson upper bound (at this confidence) of the tuned rate is within it.
DEFAULT_CONFIDENCE = 0.95


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space (numpy only: no scipy on devices)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    i = np.arange(1, k + 1, dtype=np.float64)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])
    j = np.arange(k + 1, dtype=np.float64)
    terms = log_comb + j * np.log(p) + (n - j) * np.log1p(-p)
    top = terms.max()
    return float(min(1.0, np.exp(top) * np.exp(terms - top).sum()))


def rate_upper_bound(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate observed as ``k`` events in ``n`` trials.

    The p at which P(X <= k | n, p) = 1 - confidence (the beta quantile B(confidence; k + 1, n - k)),
    found by bisection on the exact binomial sum. 0 in n gives 1 - (1 - confidence) ** (1 / n): about
    3 / n at 95 %, so a 1 % rate needs at least 299 images with no event.
    """
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    if n <= 0 or k >= n:
        return 1.0
    alpha = 1.0 - confidence
    lo, hi = k / n, 1.0
    for _ in range(60):  # 2**-60: far below any rate worth stating
        mid = 0.5 * (lo + hi)
        if _binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def images_needed(target: float, confidence: float = DEFAULT_CONFIDENCE) -> int | None:
    """The fewest images on which 0 events bound a rate within ``target`` (None: never, for 0)."""
    if target <= 0.0:
        return None
    return int(np.ceil(np.log(1.0 - confidence) / np.log1p(-target) - 1e-9))


def _events_allowed(n: int, target: float, confidence: float | None) -> int:
    """The most events in ``n`` whose rate can still be claimed within ``target`` (-1: not even 0).

    ``confidence`` None is the plain observed rate (floor(target * n)): optimistic, for analysis only.
    """
    if confidence is None:
        return int(np.floor(target * n + 1e-9))
    lo, hi = -1, n  # the bound grows with k: binary search for the last k within the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if rate_upper_bound(mid, n, confidence) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _too_few(what: str, n: int, target: float, confidence: float, fallback: float,
             threshold: str = "ok threshold") -> str:
    need = images_needed(target, confidence)
    takes = (f"it takes at least {need} with none" if need is not None
             else "no finite number of images can show a rate of 0")
    return (f"{n} {what} cannot show a rate within {target:g} at {confidence:.0%} confidence (with none "
            f"failing the upper bound is {rate_upper_bound(0, n, confidence):.3g}; {takes}); the default "
            f"{threshold} {fallback:g} is used instead")


def tune_ok_threshold(policy: Policy, logits: np.ndarray, labels: np.ndarray, max_false_reject: float,
                      confidence: float | None = DEFAULT_CONFIDENCE) -> tuple[Policy, dict[str, Any]]:
    """The highest ok threshold whose false-reject rate on (logits, labels) is provably <= ``max_false_reject``.

    Provably: the one-sided Clopper-Pearson upper bound (``rate_upper_bound`` at ``confidence``) of
    the false rejects on the good validation images is within the target; ``confidence=None`` uses
    the observed rate instead (optimistic on few images: for analysis, never for a shipped claim).
    Returns the tuned policy and a record of the tuning (target, achieved rates and their upper
    bound, whether the target is met, and why not). When too few good images are there to show the
    target even with no false reject, nothing is tuned: the policy keeps its stated default ok
    threshold and ``target_met`` is False. When the model already sends more good parts to ``defect``
    than the target allows, no threshold helps: every ok-labelled answer passes and ``target_met`` is
    False.
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
    k_max = _events_allowed(n_ok, max_false_reject, confidence)
    allowed = k_max - forced
    scores = np.sort(probs[labelled_ok, preds[labelled_ok]])
    reason = None
    if k_max < 0:
        threshold, met, source = policy.ok_threshold, False, "default"
        reason = _too_few("good validation image(s)", n_ok, max_false_reject, confidence or DEFAULT_CONFIDENCE,
                          policy.ok_threshold)
    elif allowed < 0 or len(scores) == 0:
        threshold, met, source = 0.0, False, "every ok answer passes"
        reason = (f"{forced} of {n_ok} good validation image(s) are labelled a defect: no ok threshold brings "
                  f"the false-reject rate within {max_false_reject:g}; every ok answer passes")
    else:
        # Reject the `allowed` least confident good parts: those strictly below scores[allowed].
        threshold, met, source = (float(scores[allowed]) if allowed < len(scores) else 1.0), True, "tuned"
    tuned = Policy(policy.classes, policy.ok_classes, policy.defect_classes, threshold,
                   policy.defect_threshold)
    stats = policy_stats(tuned, logits, labels)
    rejected = round((stats["false_reject_rate"] or 0.0) * n_ok)
    record = {"target_false_reject": max_false_reject, "target_met": met, "n_ok": n_ok,
              "ok_images_labelled_defect": forced, "confidence": confidence, "threshold_source": source,
              "false_reject_upper_bound": rate_upper_bound(rejected, n_ok, confidence or DEFAULT_CONFIDENCE),
              "reason": reason, **stats}
    return tuned, record


def tune_for_escape(policy: Policy, logits: np.ndarray, labels: np.ndarray, max_escape: float,
                    confidence: float | None = DEFAULT_CONFIDENCE) -> tuple[Policy, dict[str, Any]]:
    """The lowest ok threshold whose escape rate on (logits, labels) is provably <= ``max_escape``.

    An escape is a defective part passed as ``ok``: a defect image whose answer is an ok class with a
    score at or above the ok threshold. Raising the threshold sends the least confident ok answers to
    ``review`` instead; this picks the lowest threshold that keeps escapes within the target, so as few
    good parts as possible go to review. Provably, as in ``tune_ok_threshold``: the Clopper-Pearson
    upper bound of the escapes on the defect validation images is within the target; with too few
    defect images to show it even with no escape, the policy keeps its stated default ok threshold and
    ``target_met`` is False. Returns the tuned policy and a record (target, achieved rates with ``n``
    and the escape rate's upper bound, the threshold). The images that tune it also report it: the
    rates are optimistic for new parts, and the record says so.
    """
    if not policy.ok_classes:
        raise ConfigError("--max-escape needs an ok class (an escape is a defect passed as ok); "
                          "name it with --ok-class")
    if not 0.0 <= max_escape < 1.0:
        raise ConfigError(f"--max-escape must be in [0, 1), got {max_escape}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    ok_idx = np.array([policy.classes.index(c) for c in policy.ok_classes])
    true_defect = ~np.isin(labels, ok_idx)
    n_defect = int(true_defect.sum())
    if n_defect == 0:
        raise ConfigError("the validation set has no defect image: cannot tune --max-escape")
    allowed = _events_allowed(n_defect, max_escape, confidence)
    # Scores of the defects the model calls ok, most confident first: the first `allowed` may pass.
    sneaky = true_defect & np.isin(preds, ok_idx)
    risky = np.sort(probs[sneaky, preds[sneaky]])[::-1]
    reason = None
    if allowed < 0:
        threshold, met, source = policy.ok_threshold, False, "default"
        reason = _too_few("defect validation image(s)", n_defect, max_escape, confidence or DEFAULT_CONFIDENCE,
                          policy.ok_threshold)
    else:
        threshold = float(np.nextafter(risky[allowed], 1.0)) if allowed < len(risky) else 0.0
        met, source = True, "tuned"
    tuned = Policy(policy.classes, policy.ok_classes, policy.defect_classes, min(threshold, 1.0),
                   policy.defect_threshold)
    stats = policy_stats(tuned, logits, labels)
    escaped = round((stats["escape_rate"] or 0.0) * n_defect)
    record = {"target_escape": max_escape, "target_met": met, "n_defect": n_defect,
              "defects_labelled_ok": len(risky), "confidence": confidence, "threshold_source": source,
              "escape_upper_bound": rate_upper_bound(escaped, n_defect, confidence or DEFAULT_CONFIDENCE),
              "reason": reason, "tuned_on": "validation images (the same ones report it: optimistic)", **stats}
    return tuned, record


def passed_at_escape(logits: np.ndarray, labels: np.ndarray, ok_index: Sequence[int], max_escape: float) -> float:
    """The share of good images (labels in ``ok_index``) passed as ``ok`` by the policy tuned on these same
    (logits (N, C), labels (N,)) to ``max_escape`` (:func:`tune_for_escape`): 1 - its false-reject rate,
    review included. What a line gets from a model at its escape target; training picks epochs by it."""
    classes = [str(i) for i in range(logits.shape[1])]
    ok = [classes[i] for i in ok_index]
    policy = make_policy(classes, ok, [c for c in classes if c not in ok])
    _, record = tune_for_escape(policy, logits, labels, max_escape)
    return 1.0 - (record["false_reject_rate"] or 0.0)


def review_added(policy: Policy, candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """What a target's noise guard costs and buys on the same images, against the fp32 policy.

    ``candidate``: this target's logits (N, C); ``reference``: the full fp32 model's on the same images. The fp32
    policy is ``policy`` without its noise margin (same classes and thresholds) applied to ``reference``.
    Returns ``n``, ``noise_margin``, ``fp32_review_rate``, ``review_rate`` (this target, guarded),
    ``added_review_rate`` (the difference), ``noise_guard_review_rate`` (this target's answers sent to
    review by the guard alone) and the two failures the guard exists to prevent, counted: ``decision_flips``
    (an ok/defect decision of fp32 that this target acts on the other way) and ``decided_outside_review``
    (an fp32 ``review`` this target acts on). OOD review is left out of both sides (it is the same rule).
    """
    from dataclasses import replace

    fp32 = replace(policy, noise_margin=0.0, ood_limit=None)
    guarded = replace(policy, ood_limit=None)
    n = len(candidate)
    if n == 0:
        return {"n": 0, "noise_margin": policy.noise_margin}
    ref = np.array([d for _, _, d in fp32.decide_logits(reference)])
    got = np.array([d for _, _, d in guarded.decide_logits(candidate)])
    plain = np.array([d for _, _, d in fp32.decide_logits(candidate)])
    return {"n": n, "noise_margin": float(policy.noise_margin),
            "fp32_review_rate": float(np.mean(ref == "review")), "review_rate": float(np.mean(got == "review")),
            "added_review_rate": float(np.mean(got == "review") - np.mean(ref == "review")),
            "noise_guard_review_rate": float(np.mean((got == "review") & (plain != "review"))),
            "decision_flips": int(np.sum((ref != "review") & (got != "review") & (ref != got))),
            "decided_outside_review": int(np.sum((ref == "review") & (got != "review")))}
