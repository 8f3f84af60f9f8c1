"""The documented defaults: the solver and spacing ``solver="auto"`` uses.

Per schedule family and NFE, a solver and the parameters (a, b, end) of the ``Warped``
spacing, fitted by ``bench/calibrate_defaults.py`` to minimise the error against the exact
ODE solution on calibration mixtures that are not the benchmark's (other dimensions,
component counts and seeds). The benchmark (bench/solvers.py) is the held-out check. Do
not edit the table by hand: rerun the script.

Between tabulated NFEs the nearest smaller entry's solver is used, its parameters
interpolated in log NFE towards the next entry when both use the same solver; beyond the
table the nearest entry is used, integrating to t_min past the largest NFE.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from .schedules import EDMSchedule, FlowSchedule, NoiseSchedule
from .spacing import Warped

Entry = tuple[str, dict[str, Any], float, float, float | None]

# fmt: off
AUTO_TABLE: dict[str, dict[int, Entry]] = {
    "vp": {
        5: ("unipc", {"order": 2}, 0.8148, 0.9896, 0.083267),
        6: ("unipc", {"order": 2}, 0.7935, 0.9680, 0.047342),
        8: ("unipc", {"order": 2}, 0.9004, 1.0657, 0.037124),
        10: ("unipc", {"order": 3}, 0.6953, 0.8430, 0.038214),
        12: ("deis", {"variant": "logrho"}, 1.0925, 0.9351, None),
        15: ("unipc", {"order": 3}, 0.7084, 0.8665, 0.030528),
        20: ("unipc", {"order": 3}, 0.7488, 0.8554, 0.029701),
        25: ("unipc", {"order": 3}, 0.7838, 0.8714, 0.029463),
        50: ("unipc", {"order": 3}, 0.7866, 0.9226, None),
    },
    "flow": {
        5: ("unipc", {"order": 2, "frame": "classical"}, 1.5923, 1.2097, 0.096959),
        6: ("unipc", {"order": 2, "frame": "classical"}, 1.2868, 0.8403, 0.051882),
        8: ("unipc", {"order": 2, "frame": "classical"}, 1.3065, 1.0149, 0.026466),
        10: ("unipc", {"order": 2, "frame": "classical"}, 1.2752, 0.9852, 0.016275),
        12: ("lms", {}, 1.9016, 0.7069, 0.0062768),
        15: ("lms", {}, 1.6304, 0.5810, 0.0027975),
        20: ("unipc", {"order": 3, "frame": "classical"}, 1.3111, 0.6919, 0.0055396),
        25: ("unipc", {"order": 3, "frame": "classical"}, 1.4079, 0.6847, 0.0044526),
        50: ("lms", {}, 1.3822, 0.3764, None),
    },
    "edm": {
        5: ("unipc", {"order": 2}, 0.6167, 1.1318, 0.056087),
        6: ("unipc", {"order": 2}, 0.4236, 0.6385, 0.061411),
        8: ("deis", {"variant": "logrho"}, 0.6782, 0.7303, 0.019186),
        10: ("unipc", {"order": 2}, 0.7419, 1.0537, 0.015555),
        12: ("unipc", {"order": 2}, 0.7063, 1.0597, 0.010389),
        15: ("unipc", {"order": 3}, 0.5059, 0.6697, 0.0093),
        20: ("unipc", {"order": 3}, 0.6595, 0.7089, 0.0066248),
        25: ("unipc", {"order": 3}, 0.5806, 0.6535, 0.0050463),
        50: ("unipc", {"order": 3}, 0.5379, 0.5797, 0.003149),
    },
}
# fmt: on


def family(schedule: NoiseSchedule) -> str:
    """'flow', 'edm' or 'vp' (every other schedule)."""
    if isinstance(schedule, FlowSchedule):
        return "flow"
    if isinstance(schedule, EDMSchedule):
        return "edm"
    return "vp"


def auto(schedule: NoiseSchedule, nfe: int) -> tuple[str, dict[str, Any], Warped]:
    """(solver name, solver options, spacing) that ``solver="auto"`` uses at this nfe."""
    table = AUTO_TABLE[family(schedule)]
    keys = sorted(table)
    i = max(0, bisect.bisect_right(keys, nfe) - 1)
    low = keys[i]
    solver, options, a, b, end = table[low]
    if nfe > keys[-1]:
        end = None
    elif nfe > low and i + 1 < len(keys):
        high = keys[i + 1]
        solver2, options2, a2, b2, end2 = table[high]
        if (solver2, options2) == (solver, options):
            w = (math.log(nfe) - math.log(low)) / (math.log(high) - math.log(low))
            a, b = a + w * (a2 - a), b + w * (b2 - b)
            if end is not None and end2 is not None:
                end = math.exp(math.log(end) + w * (math.log(end2) - math.log(end)))
            elif w > 0.5:
                end = end2
    return solver, dict(options), Warped(a, b, end)
