"""Seeded task generation."""

from __future__ import annotations

import itertools
import statistics

import pytest

from splitlab.workload import generate_tasks


def test_periodic_tasks_are_evenly_spaced_per_device() -> None:
    tasks = generate_tasks(
        ["a", "b"], tasks_per_device=5, period_s=0.2, arrivals="periodic",
        num_samples=100, seed=3,
    )  # fmt: skip
    assert len(tasks) == 10
    assert len({task.task_id for task in tasks}) == 10
    for device in ("a", "b"):
        times = [t.arrival_s for t in tasks if t.device == device]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert gaps == pytest.approx([0.2] * 4)
        assert 0 <= times[0] < 0.2
    arrivals = [task.arrival_s for task in tasks]
    assert arrivals == sorted(arrivals)
    # Enough samples: no sample is used twice.
    assert len({task.sample for task in tasks}) == 10


def test_poisson_gaps_have_the_configured_mean_and_repeat_for_a_seed() -> None:
    def make(seed: int) -> list[float]:
        tasks = generate_tasks(
            ["a"], tasks_per_device=2000, period_s=0.1, arrivals="poisson",
            num_samples=50, seed=seed,
        )  # fmt: skip
        return [task.arrival_s for task in tasks]

    times = make(7)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert statistics.fmean(gaps) == pytest.approx(0.1, rel=0.08)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.1)
    assert make(7) == times
    assert make(8) != times


def test_bad_workloads_are_refused() -> None:
    with pytest.raises(ValueError, match="period_s must be positive, got 0"):
        generate_tasks(["a"], tasks_per_device=1, period_s=0, arrivals="periodic",
                       num_samples=1, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="at least 1, got 0"):
        generate_tasks(["a"], tasks_per_device=0, period_s=1, arrivals="periodic",
                       num_samples=1, seed=0)  # fmt: skip


def test_relative_deadline_gives_each_task_an_absolute_one() -> None:
    tasks = generate_tasks(
        ["a", "b"], tasks_per_device=4, period_s=0.5, arrivals="poisson",
        num_samples=10, seed=5, relative_deadline_s=0.25,
    )  # fmt: skip
    for task in tasks:
        assert task.deadline_s == task.arrival_s + 0.25
    # The deadline changes nothing else: same arrivals and samples as without.
    plain = generate_tasks(
        ["a", "b"], tasks_per_device=4, period_s=0.5, arrivals="poisson",
        num_samples=10, seed=5,
    )  # fmt: skip
    assert [(t.task_id, t.arrival_s, t.sample) for t in tasks] == [
        (t.task_id, t.arrival_s, t.sample) for t in plain
    ]
    assert all(t.deadline_s is None for t in plain)
    with pytest.raises(ValueError, match="relative_deadline_s must be positive"):
        generate_tasks(["a"], tasks_per_device=1, period_s=1, arrivals="periodic",
                       num_samples=1, seed=0, relative_deadline_s=0.0)  # fmt: skip
