"""Drift detection and rescaling, worked by hand."""

from __future__ import annotations

import pytest

from splitlab.link import LinkSpec
from splitlab.profile import NodeProfile, StageProfile
from splitlab.replan import DriftWatch, rescaled_link, rescaled_profile


def test_a_lasting_drift_is_reported_once_per_window() -> None:
    watch = DriftWatch(threshold=0.5, window=3)
    # Ratios 1.0, 2.0, 1.2: median 1.2 is within 50% of the plan.
    assert watch.observe("d1", "device compute", 1.0) is None
    assert watch.observe("d1", "device compute", 2.0) is None
    assert watch.observe("d1", "device compute", 1.2) is None
    # Window now 2.0, 1.2, 3.0: median 2.0 is off by 100%.
    drift = watch.observe("d1", "device compute", 3.0)
    assert drift is not None
    assert (drift.device, drift.quantity, drift.ratio) == ("d1", "device compute", 2.0)
    assert drift.describe() == "d1: device compute at 2.00x the plan's"
    # The window restarts: two more tasks are not enough to report again.
    assert watch.observe("d1", "device compute", 3.0) is None
    assert watch.observe("d1", "device compute", 3.0) is None
    # A faster link counts too: median 0.4 is off by 60%.
    for ratio in (0.4, 0.3):
        assert watch.observe("d2", "link transfer", ratio) is None
    faster = watch.observe("d2", "link transfer", 0.5)
    assert faster is not None and faster.ratio == pytest.approx(0.4)


def test_rescaling_a_profile_and_a_link() -> None:
    profile = NodeProfile(
        node="d1", model="m", input_bytes=12,
        stages=(StageProfile("a", 0.002, 0.003, 8, 4),
                StageProfile("b", 0.001, 0.002, 4, 0)),
    )  # fmt: skip
    slower = rescaled_profile(profile, 3.0)
    assert slower.head_s(2) == pytest.approx(0.009)
    assert slower.cut_bytes(1) == 8 and slower.head_param_bytes(1) == 4
    link = LinkSpec(latency_s=0.01, rate_bps=8e6)
    # 1000 bytes: 10 ms + 1 ms before, 3 x that after.
    assert rescaled_link(link, 3.0).transfer_s(1000) == pytest.approx(0.033)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >0"):
        DriftWatch(threshold=0, window=3)
