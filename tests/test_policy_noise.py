"""Issue 26: an INT8 bundle's review band covers its target's measured answer noise, and the bundle says
how much review that adds over the fp32 policy on the same images."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge_tl.runtime.policy import Policy, make_policy, review_added
from edge_tl.stages.bundle import noise_guard
from edge_tl.targets import get_target

CLASSES = ("ok", "crack", "stain")


def planted(seed: int = 0, n: int = 3000, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits spread over every regime (sure, near-tie, near each threshold) and a candidate whose
    every logit moves by at most noise / 2, so no top-1-minus-other difference moves by more than noise."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(0, 1.5, (n, len(CLASSES)))
    cand = ref + rng.uniform(-noise / 2, noise / 2, ref.shape)
    return ref, cand


def decisions(policy: Policy, logits: np.ndarray) -> np.ndarray:
    return np.array([d for _, _, d in policy.decide_logits(logits)])


def test_guarded_policy_never_acts_against_the_fp32_policy() -> None:
    ref, cand = planted()
    fp32 = make_policy(CLASSES, ok_threshold=0.7, defect_threshold=0.6)
    want = decisions(fp32, ref)
    unguarded = decisions(fp32, cand)
    # precondition: without the guard the noise does turn fp32 decisions around
    assert ((want != "review") & (unguarded != want)).sum() > 0
    guarded = replace(fp32, noise_margin=0.3)
    got = decisions(guarded, cand)
    acted = got != "review"
    assert acted.sum() > 0.7 * (want != "review").sum()  # still decides most of what fp32 decides
    assert (got[acted] == want[acted]).all()  # never ok->defect, never fp32 review -> decided
    added = review_added(guarded, cand, ref)
    assert added["decision_flips"] == 0 and added["decided_outside_review"] == 0
    assert added["added_review_rate"] > 0 and added["noise_guard_review_rate"] > 0
    assert added["review_rate"] - added["fp32_review_rate"] == added["added_review_rate"]
    # v = 0 is the old rule exactly, and an old bundle.json (no noise_margin) reads as v = 0.
    assert (decisions(replace(fp32, noise_margin=0.0), cand) == unguarded).all()
    d = guarded.to_dict()
    assert d["noise_margin"] == 0.3 and "noise_margin" in d["rule"]
    old = {k: v for k, v in d.items() if k != "noise_margin"}
    assert Policy.from_dict(old, CLASSES).noise_margin == 0.0 and Policy.from_dict(d, CLASSES) == guarded


def test_the_bundle_widens_an_int8_policy_by_the_exports_noise_and_states_the_added_review() -> None:
    ref, cand = planted(seed=1, n=500)
    fp32 = make_policy(CLASSES, ok_threshold=0.7)
    manifest = {"answer_noise": {"value": 0.3, "measured_on": "300 selection images (test)"}}
    policy, guard = noise_guard(fp32, manifest, get_target("cpu-onnxruntime-int8"), cand, ref)
    assert policy.noise_margin == 0.3
    assert guard["n"] == 500 and guard["noise_source"] == "300 selection images (test)"
    assert guard["added_review_rate"] > 0 and "for fp32 on the same 500 images" in guard["summary"]
    # A float target is not widened and says why.
    policy, guard = noise_guard(fp32, manifest, get_target("cpu-onnxruntime-fp32"), cand, ref)
    assert policy.noise_margin == 0.0 and "float target" in guard["noise_source"] and "summary" not in guard
