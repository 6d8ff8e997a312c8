"""Sweeping leftovers: runs whose command still runs are spared."""

from __future__ import annotations

import os
import subprocess
import sys

from splitlab.testbed import PREFIX_VARIABLE, find_leftovers, owner_alive, teardown


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _sleeper(prefix: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, PREFIX_VARIABLE: prefix},
    )


def test_a_run_prefix_names_its_owner() -> None:
    assert owner_alive(f"r3p{os.getpid()}")
    assert not owner_alive(f"r3p{_dead_pid()}")
    assert not owner_alive("t1234")
    assert not owner_alive("r3p")


def test_a_sweep_spares_live_runs_and_removes_orphans() -> None:
    live = f"r7p{os.getpid()}"
    orphan = f"r7p{_dead_pid()}"
    kept, lost = _sleeper(live), _sleeper(orphan)
    try:
        removed = teardown()
        assert lost.wait(timeout=10) != 0
        assert any(f"pid {lost.pid} " in line for line in removed)
        assert kept.poll() is None
        assert [each.pid for each in find_leftovers(live)] == [kept.pid]
        # Named, a live run is swept too.
        teardown(live)
        assert kept.wait(timeout=10) != 0
    finally:
        for process in (kept, lost):
            process.kill()
            process.wait()
