"""Tests for splitlab.limit on real processes and, where the machine has them,
real cgroups: a busy child is held to a quarter of a core and measured."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitlab.errors import ConfigError, TestbedError
from splitlab.limit import (
    MECHANISMS,
    LimitCapabilities,
    LimitSpec,
    Mechanism,
    ProcessLimiter,
    _parse_mounts,
    cleanup_prefix,
    detect_capabilities,
)

CAPS = detect_capabilities()
SHARE = 0.25
TOLERANCE = 0.07
MEASURE_S = 1.5
UNLIMITED_MIN = 0.8
_counter = itertools.count()

# A machine without root, cgroups or cpulimit.
BARE = LimitCapabilities(is_root=False, cpu_count=os.cpu_count() or 1)


def _skip_unless(mechanism: Mechanism) -> None:
    reason = CAPS.missing(mechanism)
    if reason is not None:
        pytest.skip(f"this machine lacks {mechanism}: {reason}")


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_counter)}"
    yield name
    if CAPS.is_root:
        cleanup_prefix(name, capabilities=CAPS)


def _spawn(code: str, *, boost: bool = True) -> subprocess.Popen[bytes]:
    """Start a Python child in a session of its own.

    With ``boost``, the child gets the highest priority this user may give,
    so other jobs on the machine cannot take the CPU time its limit allows
    and what it uses is what the limit lets it use.  With the kernel's
    autogroups, nice only ranks tasks of one session, hence the session of
    its own and the priority given to that session.
    """
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    if boost:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, -20)
            Path(f"/proc/{proc.pid}/autogroup").write_text("-20")
    return proc


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    proc = _spawn("while True: pass")
    yield proc
    proc.kill()
    proc.wait()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _used_share(pid: int, duration_s: float) -> float:
    """Cores of CPU time ``pid`` used per second of wall time."""
    start_ticks, start_s = _cpu_ticks(pid), time.monotonic()
    time.sleep(duration_s)
    used_s = (_cpu_ticks(pid) - start_ticks) / os.sysconf("SC_CLK_TCK")
    return used_s / (time.monotonic() - start_s)


def _assert_released(pid: int) -> None:
    """Check that nothing holds ``pid`` any more: no group, stop or cpulimit."""
    assert "splitlab" not in Path(f"/proc/{pid}/cgroup").read_text()
    states = []
    for _ in range(20):  # a duty cycle still running would show up as T
        states.append(_state(pid))
        time.sleep(0.005)
    assert "T" not in states
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            assert not (b"cpulimit" in argv[0] and str(pid).encode() in argv)


def _splitlab_groups(prefix: str) -> list[Path]:
    roots = {CAPS.cgroup_v2_path, CAPS.cgroup_v1_cpu_path, CAPS.cgroup_v1_memory_path}
    found: list[Path] = []
    for root in roots - {None}:
        assert root is not None
        for here, dirs, _ in os.walk(root):
            found += [
                Path(here, d) for d in dirs if d.startswith(f"splitlab-{prefix}-")
            ]
    return found


def test_an_unlimited_busy_child_uses_a_whole_core(
    busy: subprocess.Popen[bytes],
) -> None:
    used = _used_share(busy.pid, MEASURE_S)
    load = Path("/proc/loadavg").read_text().split()[0]
    assert used > UNLIMITED_MIN, f"{used:.3f} cores with other jobs at load {load}"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_each_mechanism_holds_a_busy_child_to_a_quarter_core(
    mechanism: Mechanism, prefix: str, busy: subprocess.Popen[bytes]
) -> None:
    _skip_unless(mechanism)
    with ProcessLimiter(prefix, capabilities=CAPS, prefer=mechanism) as limiter:
        limit = limiter.apply(busy.pid, LimitSpec(SHARE), name="dev1")
        assert (limit.mechanism, limit.cpu_share, limit.pid) == (
            mechanism,
            SHARE,
            busy.pid,
        )
        used = _used_share(busy.pid, MEASURE_S)
        assert abs(used - SHARE) <= TOLERANCE, f"{mechanism} let it use {used:.3f}"

        limiter.release(busy.pid)
        _assert_released(busy.pid)
        assert _splitlab_groups(prefix) == []
        assert all(not g.exists() for g in limit.groups)


def test_cgroup_v1_writes_replayable_commands_and_reads_the_memory_limit_back(
    prefix: str, busy: subprocess.Popen[bytes]
) -> None:
    _skip_unless("cgroup-v1")
    if CAPS.cgroup_v1_memory_path is None:
        pytest.skip("this machine has no cgroup v1 memory controller")
    with ProcessLimiter(prefix, capabilities=CAPS, prefer="cgroup-v1") as limiter:
        limit = limiter.apply(busy.pid, LimitSpec(0.5, 100_000_001), name="dev1")
        cpu, memory = limit.groups
        assert CAPS.cgroup_v1_cpu_path is not None
        assert CAPS.cgroup_v1_memory_path is not None
        assert cpu.name == memory.name == f"splitlab-{prefix}-dev1"
        assert cpu.is_relative_to(CAPS.cgroup_v1_cpu_path)
        assert memory.is_relative_to(CAPS.cgroup_v1_memory_path)

        # The kernel rounds the limit down to a whole page.
        page = os.sysconf("SC_PAGE_SIZE")
        assert limit.memory_bytes == 100_000_001 // page * page
        assert (
            memory / "memory.limit_in_bytes"
        ).read_text() == f"{limit.memory_bytes}\n"
        assert (cpu / "cpu.cfs_period_us").read_text() == "10000\n"
        assert (cpu / "cpu.cfs_quota_us").read_text() == "5000\n"
        assert str(busy.pid) in (cpu / "cgroup.procs").read_text().split()
        assert str(busy.pid) in (memory / "cgroup.procs").read_text().split()
        assert limit.commands == (
            f"mkdir -p {cpu}",
            f"echo 10000 > {cpu}/cpu.cfs_period_us",
            f"echo 5000 > {cpu}/cpu.cfs_quota_us",
            f"mkdir -p {memory}",
            f"echo 100000001 > {memory}/memory.limit_in_bytes",
            f"echo {busy.pid} > {cpu}/cgroup.procs",
            f"echo {busy.pid} > {memory}/cgroup.procs",
        )
        assert limit.undo_commands[1::2] == (f"rmdir {memory}", f"rmdir {cpu}")
    assert not cpu.exists()
    assert not memory.exists()


def test_cgroup_v1_memory_limit_kills_a_process_that_exceeds_it(prefix: str) -> None:
    _skip_unless("cgroup-v1")
    if CAPS.cgroup_v1_memory_path is None:
        pytest.skip("this machine has no cgroup v1 memory controller")
    if len(Path("/proc/swaps").read_text().splitlines()) > 1:
        pytest.skip("swap is on, so a memory cgroup swaps instead of killing")
    code = "import sys; sys.stdin.readline(); b = b'x' * (128 << 20)"
    returncodes = []
    with ProcessLimiter(prefix, capabilities=CAPS, prefer="cgroup-v1") as limiter:
        for name, memory in (("small", 64 << 20), ("large", 512 << 20)):
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
            limiter.apply(proc.pid, LimitSpec(1.0, memory), name=name)
            proc.communicate(b"go\n", timeout=20)
            returncodes.append(proc.returncode)
    assert returncodes == [-signal.SIGKILL, 0]


def test_cgroup_v2_writes_cpu_max_and_memory_max(
    tmp_path: Path, busy: subprocess.Popen[bytes]
) -> None:
    # The kernel's cgroup2 files are stood in for by plain files, so this
    # checks what is written, not that the kernel enforces it (see the
    # parametrised test for that, which runs where cgroup2 has cpu).
    if Path(f"/proc/{busy.pid}/cgroup").read_text().count("0::/\n") != 1:
        pytest.skip("the child is not in the cgroup2 root group")
    caps = LimitCapabilities(
        is_root=True,
        cpu_count=CAPS.cpu_count,
        cgroup_v2_path=tmp_path,
        cgroup_v2_controllers=frozenset({"cpu", "memory", "io"}),
    )
    group = tmp_path / "splitlab-run42-dev1"
    group.mkdir()
    for name in ("cgroup.subtree_control", "cgroup.procs"):
        (tmp_path / name).write_text("io\n")
    for name in ("cpu.max", "memory.max", "cgroup.procs"):
        (group / name).write_text("")

    limiter = ProcessLimiter("run42", capabilities=caps)
    assert limiter.mechanism == "cgroup-v2"
    limit = limiter.apply(busy.pid, LimitSpec(0.05, 1 << 30), name="dev1")
    assert limit.commands == (
        f"echo +cpu > {tmp_path}/cgroup.subtree_control",
        f"echo +memory > {tmp_path}/cgroup.subtree_control",
        f"mkdir -p {group}",
        f"echo '1000 20000' > {group}/cpu.max",
        f"echo 1073741824 > {group}/memory.max",
        f"echo {busy.pid} > {group}/cgroup.procs",
    )
    assert (limit.cpu_share, limit.memory_bytes) == (0.05, 1 << 30)
    assert (group / "cpu.max").read_text() == "1000 20000"
    assert (group / "cgroup.procs").read_text() == str(busy.pid)

    # Release moves the process home; rmdir then fails only because plain
    # files, unlike the kernel's, stay in the directory.
    (tmp_path / "cgroup.procs").write_text("")
    with pytest.raises(TestbedError, match=r"could not remove cgroup .*dev1.*errno 39"):
        limiter.release(busy.pid)
    assert (tmp_path / "cgroup.procs").read_text() == str(busy.pid)
    limiter.release(busy.pid)
    limiter.close()


def test_forcing_a_mechanism_the_machine_lacks_names_what_is_missing() -> None:
    with pytest.raises(TestbedError, match=r"cgroup-v1 .*unavailable.*needs root"):
        ProcessLimiter("run1", capabilities=BARE, prefer="cgroup-v1")
    with pytest.raises(TestbedError, match=r"cgroup-v2 .*unavailable.*needs root"):
        ProcessLimiter("run1", capabilities=BARE, prefer="cgroup-v2")
    with pytest.raises(TestbedError, match=r"cpulimit .*unavailable.*no cpulimit"):
        ProcessLimiter("run1", capabilities=BARE, prefer="cpulimit")
    root_without_cgroups = LimitCapabilities(is_root=True, cpu_count=2)
    with pytest.raises(TestbedError, match=r"no cgroup v1 hierarchy with the cpu"):
        ProcessLimiter("run1", capabilities=root_without_cgroups, prefer="cgroup-v1")
    with pytest.raises(ConfigError, match=r"prefer 'cgroup-v3'.*sigstop"):
        ProcessLimiter("run1", capabilities=BARE, prefer="cgroup-v3")  # type: ignore[arg-type]
    with ProcessLimiter("run1", capabilities=BARE) as limiter:
        assert limiter.mechanism == "sigstop"


def test_forcing_cgroup_v2_here_says_what_the_unified_hierarchy_lacks() -> None:
    reason = CAPS.missing("cgroup-v2")
    if reason is None:
        pytest.skip("this machine offers cgroup-v2")
    with pytest.raises(TestbedError) as caught:
        ProcessLimiter("run1", capabilities=CAPS, prefer="cgroup-v2")
    assert (
        str(caught.value) == f"the cgroup-v2 limit mechanism is unavailable: {reason}"
    )


def test_the_best_available_mechanism_is_chosen_by_default() -> None:
    with ProcessLimiter("run1", capabilities=CAPS) as limiter:
        assert limiter.mechanism == CAPS.available()[0]
    assert CAPS.available()[-1] == "sigstop"


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_release_is_safe_twice_and_after_the_process_died(
    mechanism: Mechanism, prefix: str
) -> None:
    _skip_unless(mechanism)
    with ProcessLimiter(prefix, capabilities=CAPS, prefer=mechanism) as limiter:
        procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in "ab"
        ]
        a, b = (
            limiter.apply(proc.pid, LimitSpec(0.1, 64 << 20), name=name)
            for proc, name in zip(procs, "ab", strict=True)
        )
        procs[0].kill()
        procs[0].wait()
        limiter.release(procs[0].pid)
        limiter.release(procs[0].pid)
        assert not any(g.exists() for g in a.groups)
        assert all(g.is_dir() for g in b.groups)
        procs[1].kill()  # dies while still limited; close() must cope
        procs[1].wait()
    limiter.close()
    assert _splitlab_groups(prefix) == []


def test_sigstop_holds_a_process_with_two_busy_threads_to_its_share(
    prefix: str,
) -> None:
    # hashlib lets go of the interpreter lock, so both threads can run and a
    # plain quarter-cycle duty would let the process use half a core.  The
    # child is not boosted: it would leave the duty cycle's thread, in this
    # process, no core to run on.
    code = (
        "import hashlib, threading\n"
        "def spin():\n"
        "    while True: hashlib.sha256(bytes(1 << 20)).digest()\n"
        "threading.Thread(target=spin).start()\n"
        "spin()\n"
    )
    proc = _spawn(code, boost=False)
    try:
        with ProcessLimiter(prefix, capabilities=CAPS, prefer="sigstop") as limiter:
            limiter.apply(proc.pid, LimitSpec(SHARE), name="dev1")
            time.sleep(0.2)  # let the feedback settle on the thread count
            used = _used_share(proc.pid, MEASURE_S)
        assert abs(used - SHARE) <= TOLERANCE, f"it used {used:.3f} cores"
    finally:
        proc.kill()
        proc.wait()


def test_close_continues_a_process_stopped_by_the_duty_cycle(
    prefix: str, busy: subprocess.Popen[bytes]
) -> None:
    limiter = ProcessLimiter(prefix, capabilities=CAPS, prefer="sigstop", period_s=0.2)
    limiter.apply(busy.pid, LimitSpec(0.1), name="dev1")
    time.sleep(0.1)
    assert _state(busy.pid) == "T"
    limiter.close()
    _assert_released(busy.pid)


def test_cleanup_prefix_removes_what_a_crashed_run_left(
    prefix: str, busy: subprocess.Popen[bytes]
) -> None:
    _skip_unless("cgroup-v1")
    limiter = ProcessLimiter(prefix, capabilities=CAPS, prefer="cgroup-v1")
    limit = limiter.apply(busy.pid, LimitSpec(SHARE, 64 << 20), name="dev1")
    assert CAPS.cgroup_v1_cpu_path is not None
    stray = CAPS.cgroup_v1_cpu_path / f"splitlab-{prefix}-old"
    other = CAPS.cgroup_v1_cpu_path / f"splitlab-{prefix}x-old"
    stray.mkdir()
    other.mkdir()
    try:
        removed = cleanup_prefix(prefix, capabilities=CAPS)
        assert sorted(removed) == sorted(str(g) for g in (*limit.groups, stray))
        assert other.is_dir()
        assert _splitlab_groups(prefix) == []
        _assert_released(busy.pid)
        assert cleanup_prefix(prefix, capabilities=CAPS) == []
        limiter.close()  # the groups are gone already
    finally:
        other.rmdir()


def test_applying_twice_to_one_process_or_name_is_refused(
    prefix: str, busy: subprocess.Popen[bytes]
) -> None:
    with ProcessLimiter(prefix, capabilities=CAPS, prefer="sigstop") as limiter:
        limiter.apply(busy.pid, LimitSpec(0.5), name="dev1")
        with pytest.raises(TestbedError, match=rf"process {busy.pid} is already"):
            limiter.apply(busy.pid, LimitSpec(0.5), name="dev2")
        with pytest.raises(TestbedError, match="already limited under name 'dev1'"):
            limiter.apply(os.getpid(), LimitSpec(0.5), name="dev1")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_missing_process_is_refused_and_leaves_nothing(
    mechanism: Mechanism, prefix: str
) -> None:
    _skip_unless(mechanism)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with (
        ProcessLimiter(prefix, capabilities=CAPS, prefer=mechanism) as limiter,
        pytest.raises(TestbedError, match=rf"no process with pid {proc.pid}"),
    ):
        limiter.apply(proc.pid, LimitSpec(0.5), name="gone")
    assert _splitlab_groups(prefix) == []


@pytest.mark.parametrize(
    ("share", "memory", "match"),
    [
        (0.0, None, "cpu_share 0.0 is out of range"),
        (-0.5, None, "cpu_share -0.5 is out of range"),
        (float("nan"), None, "cpu_share nan is out of range"),
        ((os.cpu_count() or 1) + 0.5, None, "is out of range.*CPUs"),
        (0.5, 0, "memory_bytes 0 must be a positive"),
        (0.5, -4096, "memory_bytes -4096 must be a positive"),
    ],
)
def test_limit_spec_rejects_values_out_of_range(
    share: float, memory: int | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        LimitSpec(share, memory)


def test_bad_prefix_name_and_period_are_refused(busy: subprocess.Popen[bytes]) -> None:
    with pytest.raises(ConfigError, match=r"run prefix 'run-1'"):
        ProcessLimiter("run-1", capabilities=BARE)
    with pytest.raises(ConfigError, match=r"run prefix '../x'"):
        cleanup_prefix("../x", capabilities=BARE)
    with pytest.raises(ConfigError, match=r"period_s 2.0"):
        ProcessLimiter("run1", capabilities=BARE, period_s=2.0)
    with (
        ProcessLimiter("run1", capabilities=BARE) as limiter,
        pytest.raises(ConfigError, match=r"device name 'a/b'"),
    ):
        limiter.apply(busy.pid, LimitSpec(0.5), name="a/b")


def test_mounts_of_a_raspberry_pi_and_of_a_v1_machine_are_read() -> None:
    pi = (
        "/dev/mmcblk0p2 / ext4 rw,noatime 0 0\n"
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
    )
    assert _parse_mounts(pi) == (Path("/sys/fs/cgroup"), None, None)
    v1 = (
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/my\\040memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert _parse_mounts(v1) == (
        Path("/sys/fs/cgroup/unified"),
        Path("/sys/fs/cgroup/cpu,cpuacct"),
        Path("/sys/fs/cgroup/my memory"),
    )
