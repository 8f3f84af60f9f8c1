"""The documented defaults: which solver and spacing ``solver="auto"`` picks per schedule.

Chosen from ``bench/solvers.py`` (see README, "Solver benchmark"): the configuration with
the lowest mean error against the exact reference over NFE 5-50 on each schedule family.
"""

from __future__ import annotations

from typing import Any

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule

#: family -> (solver name, solver options, spacing name)
AUTO: dict[str, tuple[str, dict[str, Any], str]] = {
    "vp": ("unipc", {"order": 3}, "logsnr"),
    "edm": ("unipc", {"order": 3}, "logsnr"),
    "flow": ("dpm2", {}, "flow_shift"),
}


def family(schedule: NoiseSchedule) -> str:
    if isinstance(schedule, FlowSchedule):
        return "flow"
    if isinstance(schedule, EDMSchedule):
        return "edm"
    return "vp"


def auto(schedule: NoiseSchedule) -> tuple[str, dict[str, Any], str]:
    """(solver name, options, spacing) that ``solver="auto"`` uses on this schedule."""
    return AUTO[family(schedule)]
