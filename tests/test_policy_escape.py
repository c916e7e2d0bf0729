"""Tuning the QC policy to an escape rate."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tl.cli.deploy import policy_line
from edge_tl.errors import ConfigError
from edge_tl.runtime.policy import make_policy, policy_stats, tune_for_escape


def _logits(p_ok: np.ndarray) -> np.ndarray:
    """Two-class logits (defect, ok) whose softmax gives P(ok) = p_ok."""
    return np.stack([np.zeros_like(p_ok), np.log(p_ok / (1 - p_ok))], axis=1)


def test_escape_tuning_sends_the_riskiest_ok_answers_to_review() -> None:
    rng = np.random.default_rng(0)
    good = rng.uniform(0.55, 0.999, 80)  # good parts, all called ok
    sneaky = np.linspace(0.6, 0.95, 20)  # defects the model calls ok, with rising confidence
    caught = rng.uniform(0.01, 0.4, 30)  # defects called defect
    p_ok = np.concatenate([good, sneaky, caught])
    labels = np.array([1] * 80 + [0] * 50)  # classes ("defect", "ok")
    policy = make_policy(("defect", "ok"))
    base = policy_stats(policy, _logits(p_ok), labels)
    assert base["escape_rate"] == pytest.approx(20 / 50)
    # confidence=None: the observed rate, to test which threshold is picked; the default (a 95 % upper
    # bound, which 50 defects cannot bring within 4 %) is tested in tests/test_intake.py.
    tuned, record = tune_for_escape(policy, _logits(p_ok), labels, max_escape=0.04, confidence=None)
    # 4 % of 50 defects: 2 may escape, the two most confident sneaky ones.
    assert record["escape_rate"] == pytest.approx(2 / 50) and record["target_met"]
    assert sneaky[-3] < tuned.ok_threshold <= sneaky[-2]
    assert record["false_reject_rate"] == pytest.approx(float((good < tuned.ok_threshold).mean()))
    # The lowest such threshold: one step lower lets a third defect through.
    lower = make_policy(("defect", "ok"), ok_threshold=float(sneaky[-3]))
    assert policy_stats(lower, _logits(p_ok), labels)["escape_rate"] > 0.04
    line = policy_line(tuned.to_dict() | {"tuning": record, "validation": record})
    assert "escape 4.0%" in line and "defect recall (not passed) 96.0%" in line
    with pytest.raises(ConfigError, match="ok class"):
        tune_for_escape(make_policy(("a", "b")), _logits(p_ok), labels, 0.05)
    with pytest.raises(ConfigError, match="max-escape"):
        tune_for_escape(policy, _logits(p_ok), labels, 1.5)
