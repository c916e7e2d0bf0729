"""The drift alarm of a running line: the rolling share of out-of-distribution images (``watch``, streams)."""

from __future__ import annotations

import collections
import logging

from ..errors import ConfigError

log = logging.getLogger("edge_tl")


DRIFT_WINDOW = 200
# The export calibrates the ood threshold so that about 1 % of validation images exceed it; 10 % of the
# last 200 is far outside what chance gives at 1 % (P < 1e-9, binomial), and reached within a few dozen
# images when the line really changed (on elpv, half of the poly cells score above a mono model's limit).
DRIFT_LIMIT = 0.10


class DriftMonitor:
    """The rolling share of out-of-distribution images among the last ``window`` classified ones.

    ``update`` returns a message when the share crosses ``limit`` (up: the line, camera or product may have
    changed; down: back to normal), else None. Nothing is said before ``window // 4`` images are in.
    """

    def __init__(self, window: int = DRIFT_WINDOW, limit: float = DRIFT_LIMIT) -> None:
        if window < 1:
            raise ConfigError(f"--drift-window must be at least 1, got {window}")
        if not 0.0 < limit < 1.0:
            raise ConfigError(f"--drift-limit must be a share between 0 and 1, got {limit}")
        self.window, self.limit = window, limit
        self.flags: collections.deque[bool] = collections.deque(maxlen=window)
        self.alarm = False

    @property
    def share(self) -> float:
        return sum(self.flags) / len(self.flags) if self.flags else 0.0

    def update(self, flags: list[bool]) -> str | None:
        self.flags.extend(flags)
        if len(self.flags) < max(1, self.window // 4):
            return None
        share = self.share
        if not self.alarm and share > self.limit:
            self.alarm = True
            return (f"drift: {share:.0%} of the last {len(self.flags)} images are out of distribution (limit "
                    f"{self.limit:.0%}): the line, camera or product may have changed; check the images and "
                    "consider `edge-tl adapt`")
        if self.alarm and share <= self.limit / 2:
            self.alarm = False
            return f"drift over: {share:.0%} of the last {len(self.flags)} images are out of distribution"
        return None
