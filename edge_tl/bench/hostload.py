"""How busy the host was while a benchmark timed its models.

On a shared machine torch eager degrades far more than the exported engines when other work takes the
cores (its calls stretched from ~10 ms to 0.2–5 s on the 2-core dev machine while ONNX Runtime barely
moved), so a speedup taken under load is inflated (13.6× instead of 4.7×; once 1,184×). A report must
say when that happened. This module measures, with numpy and the standard library only:

* the 1-minute load average before timing (``os.getloadavg``);
* the share of the CPUs' time that OTHER processes used during a window: busy jiffies of the CPUs this
  process may run on (``/proc/stat``) minus this process's own ``utime + stime`` (``/proc/self/stat``),
  over the elapsed jiffies of those CPUs;
* the share of CPU time stolen by the hypervisor (``steal`` column of ``/proc/stat``).

Where ``/proc`` is missing (macOS, Windows) the CPU shares are reported as not measured and only the
load average (where the OS has one) is used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- Thresholds (module constants so a caller or a test can see exactly what "busy" means) ---------------
# Other processes using more than a quarter of the CPUs during timing: on 2 cores that is half a core
# taken from a bench that runs 2 threads. torch eager's intra-op threads meet at a barrier after every
# operator, so one preempted thread stalls the whole call, while the engines' fused graphs suffer far
# less; at this level the ratio of the two no longer describes the model. A quiet dev machine shows 0–5 %.
OTHER_SHARE_MAX = 0.25
# Stolen time above 5 %: the hypervisor is giving our vCPUs to other guests for long enough to move
# per-call timings of a few ms (steal is normally < 1 % on an idle cloud host).
STEAL_SHARE_MAX = 0.05
# 1-minute load average before timing above (own threads + half the cores): more runnable tasks than our
# own threads can explain. Only used when the during-timing CPU shares cannot be measured, because the
# load average lags by about a minute: it still counts work that stopped before timing (our own
# accuracy pass, or the load that --wait-quiet waited out) and misses load that started a second ago.
LOAD_PER_CPU_MAX = 0.5
# Per-block speedup ratios whose p90/p10 exceeds 1.5: the ratio moved by half between blocks of the same
# run, so the single figure depends on when it was taken. Quiet hosts stay well under 1.3.
SPREAD_MAX = 1.5
# Length of the sampling window before timing, and of each poll while waiting for a quiet host: long
# enough for 100 Hz jiffies to resolve a few percent on 2 cores, short enough not to slow a bench.
PRE_WINDOW_S = 0.5
POLL_WINDOW_S = 1.0

_PROC_STAT = Path("/proc/stat")
_PROC_SELF_STAT = Path("/proc/self/stat")


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative jiffies at one instant: the watched CPUs' total/busy/steal and this process's own."""

    t: float
    total: int
    busy: int
    steal: int
    own: int
    cpus: int


def _allowed_cpus() -> set[int] | None:
    # Only the CPUs this process may run on compete with it; other cores of a big host do not.
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def snapshot() -> CpuSnapshot | None:
    """Read ``/proc/stat`` and ``/proc/self/stat`` now; None where they are missing or unreadable."""
    try:
        return _read(_PROC_STAT.read_text().splitlines(), _PROC_SELF_STAT.read_text())
    except (OSError, IndexError, ValueError):  # missing or unexpected format: "not measured", never a crash
        return None


def _read(stat_lines: list[str], self_stat: str) -> CpuSnapshot | None:
    own_fields = self_stat.rsplit(")", 1)[1].split()
    allowed = _allowed_cpus()
    total = busy = steal = cpus = 0
    aggregate: list[int] | None = None
    for line in stat_lines:
        if not line.startswith("cpu"):
            continue
        name, *vals = line.split()
        nums = [int(v) for v in vals[:8]] + [0] * max(0, 8 - len(vals))
        if name == "cpu":
            aggregate = nums
            continue
        if allowed is not None and int(name[3:]) not in allowed:
            continue
        # user nice system idle iowait irq softirq steal; guest time is already inside user/nice.
        total += sum(nums)
        busy += sum(nums) - nums[3] - nums[4] - nums[7]
        steal += nums[7]
        cpus += 1
    if cpus == 0:  # no per-CPU lines (some sandboxes): fall back to the machine-wide line
        if aggregate is None:
            return None
        total, steal = sum(aggregate), aggregate[7]
        busy = total - aggregate[3] - aggregate[4] - aggregate[7]
        cpus = os.cpu_count() or 1
    # Fields 14 and 15 of /proc/self/stat (utime, stime), summed over every thread of this process;
    # after the ")" that ends the command name they are items 11 and 12.
    own = int(own_fields[11]) + int(own_fields[12])
    return CpuSnapshot(time.monotonic(), total, busy, steal, own, cpus)


def window(a: CpuSnapshot | None, b: CpuSnapshot | None) -> dict[str, Any]:
    """CPU shares between two snapshots: other processes', this process's own, and stolen."""
    if a is None or b is None or b.total <= a.total:
        return {"measured": False, "window_s": (b.t - a.t) if a and b else None}
    elapsed = b.total - a.total  # = elapsed jiffies × number of watched CPUs
    own = b.own - a.own
    other = max(0, (b.busy - a.busy) - own)
    return {"measured": True, "window_s": b.t - a.t, "cpus": b.cpus,
            "other_cpu_share": min(1.0, other / elapsed), "own_cpu_share": min(1.0, own / elapsed),
            "steal_share": (b.steal - a.steal) / elapsed}


def sample(seconds: float) -> dict[str, Any]:
    """CPU shares over the next ``seconds`` (this process sleeping meanwhile)."""
    a = snapshot()
    time.sleep(seconds)
    return window(a, snapshot())


def load_average() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def wait_for_quiet(max_s: float, threshold: float = OTHER_SHARE_MAX,
                   poll_s: float = POLL_WINDOW_S) -> dict[str, Any]:
    """Poll the other processes' CPU share over ``poll_s`` windows until it is below ``threshold`` or
    ``max_s`` seconds have passed (the last poll is shortened so the limit holds)."""
    start = time.monotonic()
    polls: list[float] = []
    quiet: bool | None = False
    while True:
        left = max_s - (time.monotonic() - start)
        a = snapshot()
        if a is None:
            quiet = None  # cannot tell here: go on at once rather than sleep for nothing
            break
        if left <= 0.05 and polls:
            break
        time.sleep(max(0.05, min(poll_s, left)))  # at least one short poll, so the verdict is measured
        w = window(a, snapshot())
        if not w["measured"]:
            quiet = None
            break
        polls.append(round(w["other_cpu_share"], 4))
        if w["other_cpu_share"] < threshold:
            quiet = True
            break
    return {"limit_s": max_s, "waited_s": time.monotonic() - start, "quiet": quiet,
            "polls": polls, "measured": quiet is not None}


def ratio_spread(ref_blocks: list[float], cand_blocks: list[float]) -> dict[str, Any] | None:
    """Spread of the per-block ratio reference/candidate (each block's median call time).

    Alternating blocks keep the overall ratio honest when the host slows both runners alike; when it
    slows one far more than the other (torch eager under load), the block ratios scatter, and their
    spread shows how much the single speedup figure can be trusted.
    """
    import numpy as np

    pairs = [(r, c) for r, c in zip(ref_blocks, cand_blocks, strict=False) if c > 0]
    if not pairs:
        return None
    ratios = np.asarray([r / c for r, c in pairs], dtype=np.float64)
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(ratios, [10, 25, 50, 75, 90]))
    return {"n_blocks": int(ratios.size), "min": float(ratios.min()), "p10": p10, "p50": p50, "p90": p90,
            "max": float(ratios.max()), "rel_iqr": (p75 - p25) / p50 if p50 else None,
            "p90_over_p10": p90 / p10 if p10 > 0 else None}


def spread_reason(spread: dict[str, Any] | None, what: str = "speedup") -> str | None:
    """The verdict's reason when a ratio moved too much between blocks, else None."""
    if not spread or spread.get("p90_over_p10") is None or spread["p90_over_p10"] <= SPREAD_MAX:
        return None
    return (f"the {what} varied {spread['p90_over_p10']:.2f}× between timing blocks: p10 {spread['p10']:.2f}×, "
            f"p90 {spread['p90']:.2f}×, limit p90/p10 {SPREAD_MAX}×")


class HostLoad:
    """Records the host's load before and during a timed section.

    ``with HostLoad(own_threads=2) as load: ...timing...`` then ``load.summary()``: the ``before`` figures
    (1-minute load average, other processes' CPU share over a short window), the ``during`` figures
    (other processes' and this process's CPU share, steal), and ``busy`` with its ``reasons``.
    ``wait`` is the result of :func:`wait_for_quiet`, when the caller waited for a quiet host first.
    """

    def __init__(self, own_threads: int = 1, pre_window_s: float = PRE_WINDOW_S,
                 wait: dict[str, Any] | None = None) -> None:
        self.own_threads = own_threads
        self.pre_window_s = pre_window_s
        self.wait = wait
        self.before: dict[str, Any] = {}
        self.during: dict[str, Any] = {"measured": False}
        self._start: CpuSnapshot | None = None

    def __enter__(self) -> HostLoad:
        self.before = {"load_avg_1m": load_average()}
        if self.pre_window_s > 0:
            self.before |= sample(self.pre_window_s)
        self._start = snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.during = window(self._start, snapshot())

    def reasons(self) -> list[str]:
        out = []
        d = self.during
        if d.get("measured"):
            if d["other_cpu_share"] > OTHER_SHARE_MAX:
                out.append(f"other processes used {100 * d['other_cpu_share']:.0f} % of the CPUs during timing, "
                           f"limit {100 * OTHER_SHARE_MAX:.0f} %")
            if d["steal_share"] > STEAL_SHARE_MAX:
                out.append(f"the hypervisor stole {100 * d['steal_share']:.0f} % of the CPU time during timing, "
                           f"limit {100 * STEAL_SHARE_MAX:.0f} %")
        else:
            load, cpus = self.before.get("load_avg_1m"), len(_allowed_cpus() or ()) or os.cpu_count() or 1
            limit = self.own_threads + LOAD_PER_CPU_MAX * cpus
            if load is not None and load > limit:
                out.append(f"1-minute load average {load:.2f} before timing on {cpus} CPUs, "
                           f"limit {limit:.1f} = {self.own_threads} own threads + {LOAD_PER_CPU_MAX} per CPU")
        w = self.wait
        if w and w.get("quiet") is False:
            out.append(f"waited {w['waited_s']:.0f} s (--wait-quiet {w['limit_s']:g}) and the host never "
                       "became quiet")
        return out

    @property
    def busy(self) -> bool:
        return bool(self.reasons())

    def summary(self) -> dict[str, Any]:
        measured = bool(self.during.get("measured")) or self.before.get("load_avg_1m") is not None
        return {"measured": measured, "before": self.before, "during": self.during, "busy": self.busy,
                "reasons": self.reasons(), "wait": self.wait, "own_threads": self.own_threads,
                "thresholds": {"other_cpu_share": OTHER_SHARE_MAX, "steal_share": STEAL_SHARE_MAX,
                               "load_per_cpu": LOAD_PER_CPU_MAX, "ratio_p90_over_p10": SPREAD_MAX}}


def describe(host_load: dict[str, Any] | None) -> str:
    """One line for reports: load before / during and the verdict."""
    if not host_load or not host_load.get("measured"):
        return "Host load: not measured on this system."
    b, d = host_load.get("before") or {}, host_load.get("during") or {}
    parts = []
    before = []
    if b.get("load_avg_1m") is not None:
        before.append(f"load average {b['load_avg_1m']:.2f}")
    if b.get("measured"):
        before.append(f"other processes {100 * b['other_cpu_share']:.0f} % of the CPUs")
    parts.append("before: " + (", ".join(before) or "not measured"))
    if d.get("measured"):
        parts.append(f"during timing: other processes {100 * d['other_cpu_share']:.0f} %, this process "
                     f"{100 * d['own_cpu_share']:.0f} %, steal {100 * d['steal_share']:.1f} %")
    else:
        parts.append("during timing: not measured")
    w = host_load.get("wait")
    if w:
        parts.append(f"waited {w['waited_s']:.1f} s of {w['limit_s']:g} s for a quiet host")
    verdict = "BUSY (" + "; ".join(host_load.get("reasons") or []) + ")" if host_load.get("busy") else "quiet"
    return f"Host load: {'; '.join(parts)} → {verdict}."



def unreliable_label(report: dict[str, Any]) -> str | None:
    """"host busy" / "ratio unstable" when a bench report's timings are marked unreliable, else None."""
    if report.get("timing_reliable") is not False:
        return None
    return "host busy" if (report.get("host_load") or {}).get("busy") else "ratio unstable"


def describe_spread(spread: dict[str, Any] | None) -> str | None:
    """One line: the per-block speedup ratios' min, p10, median, p90, max and relative IQR."""
    if not spread:
        return None
    iqr = f", relative IQR {100 * spread['rel_iqr']:.0f} %" if spread.get("rel_iqr") is not None else ""
    return (f"{spread['n_blocks']} blocks: min {spread['min']:.2f}×, p10 {spread['p10']:.2f}×, median "
            f"{spread['p50']:.2f}×, p90 {spread['p90']:.2f}×, max {spread['max']:.2f}×{iqr}")
