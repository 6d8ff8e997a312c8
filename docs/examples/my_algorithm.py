"""An example user algorithm for splitlab: offload from the slowest devices.

Point a scenario at it with ``algorithm: docs/examples/my_algorithm.py:slowest_offload``
(or ``...:SlowestOffload`` for the class form).  The file is imported by the
planning process with that process's rights, so only use files you trust.

The rule: rank the devices by how long their whole model takes on their own
CPU; the slower half sends its input to the base station (``k = 0``), the
faster half runs as much of the model as its memory holds.
"""

from __future__ import annotations

from splitlab.plan import PlanningProblem


def slowest_offload(problem: PlanningProblem) -> dict[str, int]:
    """Offload the slower half of the devices, keep the rest local.

    Parameters
    ----------
    problem:
        The planning problem (profiles, links, tasks, memory limits).

    Returns
    -------
    dict[str, int]
        The cut of every device; splitlab checks it before using it.
    """
    by_speed = sorted(
        problem.devices,
        key=lambda device: (
            -problem.device_profiles[device].head_s(problem.num_stages),
            device,
        ),
    )
    slow = set(by_speed[: len(by_speed) // 2])
    return {
        device: 0 if device in slow else max(problem.allowed_cuts(device))
        for device in problem.devices
    }


class SlowestOffload:
    """The same rule as a class: splitlab builds it with no arguments."""

    name = "slowest-offload"

    def __call__(self, problem: PlanningProblem) -> dict[str, int]:
        """Choose every device's cut with :func:`slowest_offload`."""
        return slowest_offload(problem)
