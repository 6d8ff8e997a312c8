"""Holding a device process to its share of a CPU core and to a memory limit.

The ``local`` testbed runs every emulated device as an OS process on one
machine; this module makes each of them as slow and as small as the board it
stands for.  It finds out at run time what the machine offers
(:func:`detect_capabilities`) and uses the best of four mechanisms:

``cgroup-v2``
    A group under the root of the unified hierarchy with ``cpu.max`` (a
    quota per 10 ms period) and ``memory.max``.  Needs root and the ``cpu``
    controller in the unified hierarchy; real boards usually have it.
``cgroup-v1``
    A group in the v1 ``cpu`` hierarchy with ``cpu.cfs_period_us`` and
    ``cpu.cfs_quota_us``, and one in the v1 ``memory`` hierarchy with
    ``memory.limit_in_bytes`` when that controller is mounted.  Needs root.
    The groups are made inside the caller's own group of each hierarchy, so
    a device never escapes a limit the caller itself runs under.
``cpulimit``
    The ``cpulimit`` program watching the process.  It limits CPU only.
``sigstop``
    A thread of the caller that stops and continues the process with
    ``SIGSTOP``/``SIGCONT`` in a fixed cycle, shortening the runs when the
    process's CPU clock shows it used more than its share.  Always
    available; it limits CPU only, and only the process itself (not the
    children it starts).

The cgroup mechanisms hold the process and every child it starts later;
``cpulimit`` and ``sigstop`` hold the process alone.  Every file write and
command is logged at debug level and returned as a replayable shell line in
:attr:`AppliedLimit.commands`, so the same limit can be set by hand on a
board.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, get_args

from splitlab.errors import ConfigError, TestbedError

_log = logging.getLogger(__name__)

Mechanism = Literal["cgroup-v2", "cgroup-v1", "cpulimit", "sigstop"]
"""The name of a way to limit a process."""

MECHANISMS: tuple[Mechanism, ...] = get_args(Mechanism)
"""Every mechanism, best first: the order :class:`ProcessLimiter` tries them."""

DEFAULT_PERIOD_S = 0.010
"""The window a CPU share is enforced over: the CFS period and the duty cycle."""

MIN_CPU_SHARE = 0.01
"""The smallest share accepted: ``cpulimit`` takes whole percents, and the
kernel's smallest CFS quota (1 ms) would need a period of 100 ms at 1 %."""

_MIN_QUOTA_US = 1_000
_MIN_PERIOD_US = 1_000
_MAX_PERIOD_US = 1_000_000
_GROUP_PREFIX = "splitlab-"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.]{1,64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_RMDIR_TIMEOUT_S = 1.0
_CPULIMIT_STARTUP_S = 0.05
_CPULIMIT_STOP_S = 2.0
# A duty-cycled process pays back what it overran its share by (when the
# limiter thread woke late) by staying stopped, but never for longer than
# this: a longer stall of the limiter is forgiven rather than paid back.
_MAX_PAYBACK_S = 1.0


@dataclass(frozen=True, slots=True)
class LimitCapabilities:
    """What this machine offers for limiting a process.

    Attributes
    ----------
    is_root:
        Whether the caller runs with effective uid 0 (cgroups need it).
    cpu_count:
        Number of CPUs of the machine (``os.cpu_count()``).
    cgroup_v2_path:
        Mount point of the unified (cgroup v2) hierarchy, or ``None``.
    cgroup_v2_controllers:
        Controllers the unified hierarchy's root offers (its
        ``cgroup.controllers``).
    cgroup_v1_cpu_path:
        Mount point of the v1 hierarchy that holds the ``cpu`` controller.
    cgroup_v1_memory_path:
        Mount point of the v1 hierarchy that holds the ``memory`` controller.
    cpulimit_path:
        The ``cpulimit`` executable found on ``PATH``.
    """

    is_root: bool
    cpu_count: int
    cgroup_v2_path: Path | None = None
    cgroup_v2_controllers: frozenset[str] = frozenset()
    cgroup_v1_cpu_path: Path | None = None
    cgroup_v1_memory_path: Path | None = None
    cpulimit_path: Path | None = None

    def missing(self, mechanism: Mechanism) -> str | None:
        """Say what the machine lacks for ``mechanism``.

        Parameters
        ----------
        mechanism:
            One of :data:`MECHANISMS`.

        Returns
        -------
        str or None
            ``None`` when the mechanism can be used, else a sentence naming
            what is missing.
        """
        if mechanism in ("cgroup-v2", "cgroup-v1") and not self.is_root:
            return (
                f"{mechanism} needs root, but this process runs as uid {os.geteuid()}"
            )
        if mechanism == "cgroup-v2":
            if self.cgroup_v2_path is None:
                return "no cgroup2 (unified) hierarchy is mounted (see /proc/mounts)"
            if "cpu" not in self.cgroup_v2_controllers:
                offered = ", ".join(sorted(self.cgroup_v2_controllers)) or "none"
                return (
                    f"the cgroup2 hierarchy at {self.cgroup_v2_path} has no cpu "
                    f"controller (its cgroup.controllers offers: {offered})"
                )
            if not os.access(self.cgroup_v2_path, os.W_OK):
                return f"the cgroup2 hierarchy at {self.cgroup_v2_path} is read-only"
        elif mechanism == "cgroup-v1":
            if self.cgroup_v1_cpu_path is None:
                return "no cgroup v1 hierarchy with the cpu controller is mounted"
            if not os.access(self.cgroup_v1_cpu_path, os.W_OK):
                path = self.cgroup_v1_cpu_path
                return f"the cgroup v1 cpu hierarchy {path} is read-only"
        elif mechanism == "cpulimit" and self.cpulimit_path is None:
            return "no cpulimit executable on PATH (Debian package cpulimit)"
        return None

    def available(self) -> tuple[Mechanism, ...]:
        """Return the mechanisms this machine offers, best first."""
        return tuple(m for m in MECHANISMS if self.missing(m) is None)


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """The limit one device process is held to.

    Attributes
    ----------
    cpu_share:
        CPU time allowed per unit of wall time: ``0.25`` is a quarter of one
        core, ``1.0`` a whole core, ``2.0`` two cores.  Between
        :data:`MIN_CPU_SHARE` and the machine's CPU count.
    memory_bytes:
        Memory limit in bytes, or ``None`` for no memory limit.

    Raises
    ------
    ConfigError
        If a value is out of range; the message names the field and value.
    """

    cpu_share: float
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        cpus = os.cpu_count() or 1
        share = self.cpu_share
        if not (math.isfinite(share) and MIN_CPU_SHARE <= share <= cpus):
            raise ConfigError(
                f"cpu_share {share!r} is out of range: it must lie between "
                f"{MIN_CPU_SHARE} and the machine's {cpus} CPUs"
            )
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ConfigError(
                f"memory_bytes {self.memory_bytes!r} must be a positive number of bytes"
            )


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """A limit as it was put on one process.

    Attributes
    ----------
    mechanism:
        Which mechanism holds the process.
    pid:
        The limited process.
    name:
        The device name the limit was applied under.
    cpu_share:
        The share actually enforced (the requested one, rounded to what the
        mechanism can express: whole microseconds of quota, whole percents).
    memory_bytes:
        The memory limit the kernel reports back (rounded down to a page),
        or ``None`` when no memory limit is enforced.
    commands:
        Every file write and command that set the limit, as shell lines.
    undo_commands:
        The shell lines that remove the limit again.
    groups:
        The cgroup directories holding the process (empty without cgroups);
        their ``cpu.stat`` and memory files tell what the device used.
    """

    mechanism: Mechanism
    pid: int
    name: str
    cpu_share: float
    memory_bytes: int | None
    commands: tuple[str, ...]
    undo_commands: tuple[str, ...]
    groups: tuple[Path, ...] = ()


def detect_capabilities() -> LimitCapabilities:
    """Find out which limit mechanisms this machine offers.

    Reads ``/proc/mounts`` for the cgroup hierarchies, the unified
    hierarchy's ``cgroup.controllers``, and ``PATH`` for ``cpulimit``.

    Returns
    -------
    LimitCapabilities
        What was found; nothing is changed on the machine.
    """
    v2_path, v1_cpu, v1_memory = _parse_mounts(Path("/proc/mounts").read_text())
    controllers: frozenset[str] = frozenset()
    if v2_path is not None:
        with contextlib.suppress(OSError):
            controllers = frozenset(
                (v2_path / "cgroup.controllers").read_text().split()
            )
    cpulimit = shutil.which("cpulimit")
    return LimitCapabilities(
        is_root=os.geteuid() == 0,
        cpu_count=os.cpu_count() or 1,
        cgroup_v2_path=v2_path,
        cgroup_v2_controllers=controllers,
        cgroup_v1_cpu_path=v1_cpu,
        cgroup_v1_memory_path=v1_memory,
        cpulimit_path=Path(cpulimit) if cpulimit else None,
    )


def cleanup_prefix(
    prefix: str, *, capabilities: LimitCapabilities | None = None
) -> list[str]:
    """Remove every cgroup a run with ``prefix`` left behind.

    Looks through the whole of each cgroup hierarchy for directories named
    ``splitlab-<prefix>-*``, moves any process still in one to its parent
    group and removes it.  Used by ``splitlab testbed down`` after a run that
    did not close its :class:`ProcessLimiter`.

    Parameters
    ----------
    prefix:
        The run prefix given to :class:`ProcessLimiter`.
    capabilities:
        The machine's capabilities; detected when omitted.

    Returns
    -------
    list of str
        The directories removed, in the order they were removed.

    Raises
    ------
    ConfigError
        If ``prefix`` is not a valid run prefix.
    TestbedError
        If a leftover group could not be removed; the others are removed
        first.
    """
    _check_prefix(prefix)
    caps = capabilities or detect_capabilities()
    start = f"{_GROUP_PREFIX}{prefix}-"
    roots = dict.fromkeys(
        p
        for p in (
            caps.cgroup_v2_path,
            caps.cgroup_v1_cpu_path,
            caps.cgroup_v1_memory_path,
        )
        if p is not None
    )
    removed: list[str] = []
    failures: list[str] = []
    for root in roots:
        for group in _find_groups(root, start):
            try:
                _remove_group(group, home=group.parent)
            except TestbedError as exc:
                failures.append(str(exc))
            else:
                removed.append(str(group))
    if failures:
        raise TestbedError(
            f"could not remove {len(failures)} leftover cgroup(s) of prefix "
            f"{prefix!r}: " + "; ".join(failures)
        )
    return removed


class ProcessLimiter:
    """Puts device processes under CPU and memory limits and takes them off.

    One limiter serves one run: it picks one mechanism when made (the best
    the machine offers, or the one named by ``prefer``) and remembers every
    process it limited, so :meth:`close` undoes everything.  Use it as a
    context manager; it is also closed at interpreter exit.

    Parameters
    ----------
    prefix:
        The run's prefix: cgroups are named ``splitlab-<prefix>-<name>``.
        Letters, digits, ``_`` and ``.`` only, so :func:`cleanup_prefix`
        of one run never matches another run's groups.
    capabilities:
        The machine's capabilities; detected when omitted.
    prefer:
        Force one mechanism instead of the best available.
    period_s:
        The window a share is enforced over: the CFS period of the cgroup
        mechanisms and the cycle of ``sigstop``.  1 ms to 1 s.

    Raises
    ------
    ConfigError
        If ``prefix``, ``prefer`` or ``period_s`` is invalid.
    TestbedError
        If ``prefer`` names a mechanism the machine lacks; the message says
        what is missing.

    Notes
    -----
    The ``sigstop`` cycle runs in a thread of this process: when this
    process keeps the interpreter busy, the signals come late (by up to the
    interpreter's switch interval, 5 ms).  What the process used in excess
    is taken off its next cycles, so the share holds on average but single
    cycles can run long.

    The kernel charges memory to the group that was current when it was
    allocated and does not move the charge with the process, so a memory
    limit only counts what the process allocates after :meth:`apply`: apply
    it before the device loads its model.
    """

    def __init__(
        self,
        prefix: str,
        *,
        capabilities: LimitCapabilities | None = None,
        prefer: Mechanism | None = None,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> None:
        _check_prefix(prefix)
        if not (_MIN_PERIOD_US <= period_s * 1e6 <= _MAX_PERIOD_US):
            raise ConfigError(f"period_s {period_s!r} must lie between 0.001 and 1.0")
        caps = capabilities or detect_capabilities()
        if prefer is None:
            mechanism = caps.available()[0]
        elif prefer not in MECHANISMS:
            raise ConfigError(
                f"prefer {prefer!r} is not a limit mechanism; choose one of "
                + ", ".join(MECHANISMS)
            )
        else:
            reason = caps.missing(prefer)
            if reason is not None:
                raise TestbedError(
                    f"the {prefer} limit mechanism is unavailable: {reason}"
                )
            mechanism = prefer
        self._prefix = prefix
        self._caps = caps
        self._mechanism: Mechanism = mechanism
        self._period_s = period_s
        self._grants: dict[int, _Grant] = {}
        self._lock = threading.Lock()
        self._v1_cpu_base = _own_group(caps.cgroup_v1_cpu_path, "cpu")
        self._v1_memory_base = _own_group(caps.cgroup_v1_memory_path, "memory")
        atexit.register(self.close)
        _log.debug("limiter %s uses %s", prefix, mechanism)

    @property
    def mechanism(self) -> Mechanism:
        """The mechanism this limiter puts processes under."""
        return self._mechanism

    @property
    def prefix(self) -> str:
        """The run prefix of the limiter's cgroups."""
        return self._prefix

    def apply(self, pid: int, spec: LimitSpec, *, name: str) -> AppliedLimit:
        """Put process ``pid`` under ``spec``.

        Parameters
        ----------
        pid:
            The process to limit.
        spec:
            The share and memory limit.
        name:
            The device's name (letters, digits, ``_``, ``.``, ``-``); it
            names the cgroup and the log lines.

        Returns
        -------
        AppliedLimit
            What was enforced and every command that did it.

        Raises
        ------
        ConfigError
            If ``name`` is invalid or the share exceeds this machine's CPUs.
        TestbedError
            If the process does not exist, is already limited, or a write or
            command failed; whatever was done is undone first.
        """
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"device name {name!r} may hold only letters, digits, '_', '.', '-'"
            )
        if spec.cpu_share > self._caps.cpu_count:
            raise ConfigError(
                f"cpu_share {spec.cpu_share} exceeds this machine's "
                f"{self._caps.cpu_count} CPUs"
            )
        with self._lock:
            if pid in self._grants:
                raise TestbedError(
                    f"process {pid} is already limited as {self._grants[pid].name!r}"
                )
            if any(g.name == name for g in self._grants.values()):
                raise TestbedError(f"a process is already limited under name {name!r}")
            grant = _Grant(name=name, pid=pid)
            try:
                limit = self._start(grant, spec)
            except BaseException:
                with contextlib.suppress(TestbedError):
                    grant.undo()
                raise
            self._grants[pid] = grant
        if spec.memory_bytes is not None and limit.memory_bytes is None:
            _log.warning(
                "memory limit of %d bytes for %s is not enforced: %s",
                spec.memory_bytes,
                name,
                self._memory_gap(),
            )
        return limit

    def release(self, pid: int) -> None:
        """Take process ``pid`` off its limit.

        Stops the duty cycle or ``cpulimit``, continues the process, moves it
        (and any children in its groups) back to the groups it came from and
        removes the groups.  Does nothing for a process this limiter does not
        hold, so calling it twice, or after the process died, is safe.

        Raises
        ------
        TestbedError
            If a group could not be removed.
        """
        with self._lock:
            grant = self._grants.pop(pid, None)
        if grant is not None:
            grant.undo()

    def close(self) -> None:
        """Release every process this limiter holds; safe to call twice.

        Raises
        ------
        TestbedError
            If some group could not be removed; every process is released
            first.
        """
        atexit.unregister(self.close)
        with self._lock:
            grants = list(self._grants.values())
            self._grants.clear()
        failures: list[str] = []
        for grant in grants:
            try:
                grant.undo()
            except TestbedError as exc:
                failures.append(str(exc))
        if failures:
            raise TestbedError("; ".join(failures))

    def __enter__(self) -> ProcessLimiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _memory_gap(self) -> str:
        if self._mechanism == "cgroup-v2":
            return "the cgroup2 hierarchy offers no memory controller"
        if self._mechanism == "cgroup-v1":
            return "the cgroup v1 memory controller is not mounted"
        return f"{self._mechanism} limits CPU only"

    def _start(self, grant: _Grant, spec: LimitSpec) -> AppliedLimit:
        if self._mechanism == "cgroup-v2":
            return self._start_cgroup_v2(grant, spec)
        if self._mechanism == "cgroup-v1":
            return self._start_cgroup_v1(grant, spec)
        grant.pidfd = _open_pidfd(grant.pid)
        if self._mechanism == "cpulimit":
            return self._start_cpulimit(grant, spec)
        return self._start_sigstop(grant, spec)

    def _group_name(self, name: str) -> str:
        return f"{_GROUP_PREFIX}{self._prefix}-{name}"

    def _start_cgroup_v2(self, grant: _Grant, spec: LimitSpec) -> AppliedLimit:
        root = self._caps.cgroup_v2_path
        assert root is not None  # guaranteed by LimitCapabilities.missing
        quota_us, period_us = _cfs_window(spec.cpu_share, self._period_s)
        limit_memory = (
            spec.memory_bytes is not None
            and "memory" in self._caps.cgroup_v2_controllers
        )
        home = _home_group(grant.pid, root, None)
        group = root / self._group_name(grant.name)

        # Children of the root get a controller only once the root's
        # subtree_control lists it; the root is exempt from the rule that a
        # group with processes may not hand controllers down.
        try:
            enabled = _read(root / "cgroup.subtree_control").split()
        except OSError as exc:
            raise TestbedError(
                f"cannot read {root}/cgroup.subtree_control: {exc.strerror}"
            ) from exc
        wanted = ["cpu", "memory"] if limit_memory else ["cpu"]
        for controller in wanted:
            if controller not in enabled:
                grant.run_write(root / "cgroup.subtree_control", f"+{controller}")

        grant.run_mkdir(group, home)
        grant.run_write(group / "cpu.max", f"{quota_us} {period_us}")
        memory: int | None = None
        if limit_memory:
            assert spec.memory_bytes is not None
            grant.run_write(group / "memory.max", str(spec.memory_bytes))
            memory = int(_read(group / "memory.max"))
        grant.run_write(group / "cgroup.procs", str(grant.pid))
        return grant.applied("cgroup-v2", quota_us / period_us, memory)

    def _start_cgroup_v1(self, grant: _Grant, spec: LimitSpec) -> AppliedLimit:
        assert self._v1_cpu_base is not None  # guaranteed by LimitCapabilities
        quota_us, period_us = _cfs_window(spec.cpu_share, self._period_s)
        cpu_home = _home_group(grant.pid, self._caps.cgroup_v1_cpu_path, "cpu")
        cpu_group = self._v1_cpu_base / self._group_name(grant.name)
        grant.run_mkdir(cpu_group, cpu_home)

        # The period goes first: a 10 ms period with the default 100 ms
        # quota is valid, the reverse order need not be.
        grant.run_write(cpu_group / "cpu.cfs_period_us", str(period_us))
        grant.run_write(cpu_group / "cpu.cfs_quota_us", str(quota_us))

        memory: int | None = None
        memory_group: Path | None = None
        if spec.memory_bytes is not None and self._v1_memory_base is not None:
            memory_home = _home_group(
                grant.pid, self._caps.cgroup_v1_memory_path, "memory"
            )
            memory_group = self._v1_memory_base / self._group_name(grant.name)
            grant.run_mkdir(memory_group, memory_home)
            grant.run_write(
                memory_group / "memory.limit_in_bytes", str(spec.memory_bytes)
            )
            memory = int(_read(memory_group / "memory.limit_in_bytes"))

        grant.run_write(cpu_group / "cgroup.procs", str(grant.pid))
        if memory_group is not None:
            grant.run_write(memory_group / "cgroup.procs", str(grant.pid))
        return grant.applied("cgroup-v1", quota_us / period_us, memory)

    def _start_cpulimit(self, grant: _Grant, spec: LimitSpec) -> AppliedLimit:
        assert self._caps.cpulimit_path is not None  # guaranteed by capabilities
        percent = round(spec.cpu_share * 100)
        argv = [
            str(self._caps.cpulimit_path),
            "-p",
            str(grant.pid),
            "-l",
            str(percent),
            "-z",
            "-q",
        ]
        grant.log(shlex.join(argv) + " &")
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
            )
            grant.cpulimit = proc
            grant.undo_commands.append(f"kill {proc.pid}")
            grant.undo_commands.append(f"kill -CONT {grant.pid}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(_CPULIMIT_STARTUP_S)
                errors.seek(0)
                raise TestbedError(
                    f"cpulimit for process {grant.pid} exited at once with code "
                    f"{code}: {errors.read().decode(errors='replace').strip()}"
                )
        return grant.applied("cpulimit", percent / 100, None)

    def _start_sigstop(self, grant: _Grant, spec: LimitSpec) -> AppliedLimit:
        assert grant.pidfd is not None
        pid = grant.pid
        share = spec.cpu_share
        run_s = min(share, 1.0) * self._period_s
        if share < 1.0:
            grant.log(
                f"while kill -CONT {pid} && sleep {run_s:.6f} && kill -STOP {pid} "
                f"&& sleep {self._period_s - run_s:.6f}; do :; done &"
            )
            grant.undo_commands.append("kill %1")
        else:
            # No fixed shell loop holds a process to a whole core or more:
            # only the feedback below can, by stopping it for whole cycles.
            grant.log(
                f"# splitlab holds {pid} to {share} cores by stopping it for "
                f"whole {self._period_s} s cycles while it is over its share"
            )
        grant.undo_commands.append(f"kill -CONT {pid}")
        grant.stop = threading.Event()
        grant.thread = threading.Thread(
            target=_duty_cycle,
            args=(grant.pidfd, pid, share, self._period_s, grant.stop),
            name=f"splitlab-sigstop-{grant.name}",
            daemon=True,
        )
        grant.thread.start()
        return grant.applied("sigstop", share, None)


@dataclass(eq=False)
class _Grant:
    """The mutable state behind one limited process, and how to undo it."""

    name: str
    pid: int
    commands: list[str] = field(default_factory=list)
    undo_commands: list[str] = field(default_factory=list)
    groups: list[tuple[Path, Path]] = field(default_factory=list)
    pidfd: int | None = None
    cpulimit: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    stop: threading.Event | None = None

    def log(self, command: str) -> None:
        self.commands.append(command)
        _log.debug("limit %s: %s", self.name, command)

    def run_write(self, path: Path, value: str) -> None:
        command = _write_command(path, value)
        self.log(command)
        try:
            _write(path, value)
        except OSError as exc:
            raise TestbedError(
                f"limiting {self.name} (pid {self.pid}) failed at "
                f"`{command}`: {exc.strerror} (errno {exc.errno})"
            ) from exc

    def run_mkdir(self, group: Path, home: Path) -> None:
        command = f"mkdir -p {shlex.quote(str(group))}"
        self.log(command)
        try:
            group.mkdir(exist_ok=True)
        except OSError as exc:
            raise TestbedError(
                f"limiting {self.name} (pid {self.pid}) failed at "
                f"`{command}`: {exc.strerror} (errno {exc.errno})"
            ) from exc
        self.groups.append((group, home))
        self.undo_commands[:0] = [
            _write_command(home / "cgroup.procs", str(self.pid)),
            f"rmdir {shlex.quote(str(group))}",
        ]

    def applied(
        self, mechanism: Mechanism, cpu_share: float, memory_bytes: int | None
    ) -> AppliedLimit:
        return AppliedLimit(
            mechanism=mechanism,
            pid=self.pid,
            name=self.name,
            cpu_share=cpu_share,
            memory_bytes=memory_bytes,
            commands=tuple(self.commands),
            undo_commands=tuple(self.undo_commands),
            groups=tuple(group for group, _ in self.groups),
        )

    def undo(self) -> None:
        """Undo everything this grant did; a dead process is no error."""
        if self.stop is not None and self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread = None
        if self.cpulimit is not None:
            _log.debug("limit %s: kill %d", self.name, self.cpulimit.pid)
            self.cpulimit.terminate()
            try:
                self.cpulimit.wait(_CPULIMIT_STOP_S)
            except subprocess.TimeoutExpired:
                self.cpulimit.kill()
                self.cpulimit.wait()
            self.cpulimit = None
        if self.pidfd is not None:
            _log.debug("limit %s: kill -CONT %d", self.name, self.pid)
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGCONT)
            os.close(self.pidfd)
            self.pidfd = None
        failures: list[str] = []
        while self.groups:
            group, home = self.groups.pop()
            try:
                _remove_group(group, home=home)
            except TestbedError as exc:
                failures.append(str(exc))
        if failures:
            raise TestbedError("; ".join(failures))


def _duty_cycle(
    pidfd: int, pid: int, share: float, period_s: float, stop: threading.Event
) -> None:
    """Hold process ``pid`` to ``share`` cores until ``stop`` is set.

    Every cycle of ``period_s`` the process runs for its share of the cycle
    and is stopped for the rest.  The CPU time it really used (all its
    threads) is read from its CPU clock after each cycle, and what it used
    beyond its share is taken off the next runs, so a late ``SIGSTOP`` or a
    process with several busy threads is still held to the share on
    average.
    """
    budget_s = share * period_s
    max_debt_s = share * _MAX_PAYBACK_S
    debt_s = 0.0
    try:
        clock = _process_cpu_clock(pid)
        used_total_s = time.clock_gettime(clock)
        while True:
            cycle_start = time.monotonic()
            run_s = min(period_s, max(0.0, budget_s - debt_s))
            if run_s > 0:
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
                if stop.wait(run_s):
                    return
            if run_s < period_s:
                signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
            if stop.wait(max(0.0, cycle_start + period_s - time.monotonic())):
                return

            # Credit left from an idle cycle is capped at one cycle's share,
            # so an idle process cannot save up for a long burst.
            now_used_s = time.clock_gettime(clock)
            elapsed_s = time.monotonic() - cycle_start
            debt_s += (now_used_s - used_total_s) - share * elapsed_s
            debt_s = min(max(debt_s, -budget_s), max_debt_s)
            used_total_s = now_used_s
    except OSError as exc:
        # Mostly the process is gone: its CPU clock reads EINVAL once it is
        # reaped, and its pidfd refuses signals.
        _log.debug("duty cycle of process %d ended: %s", pid, exc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGCONT)


def _process_cpu_clock(pid: int) -> int:
    """The clock id of the CPU time of process ``pid``, all threads summed.

    Linux encodes it as glibc's ``clock_getcpuclockid`` does: the bitwise
    complement of the pid shifted left by three, with ``CPUCLOCK_SCHED``
    (2) in the low bits.
    """
    return ((~pid) << 3) | 2


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"run prefix {prefix!r} must be 1 to 64 letters, digits, '_' or '.'"
        )


def _open_pidfd(pid: int) -> int:
    """Open a pidfd, so no signal can reach a later process with a reused pid."""
    try:
        pidfd = os.pidfd_open(pid)
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError as exc:
        raise TestbedError(f"no process with pid {pid} to limit") from exc
    except PermissionError as exc:
        raise TestbedError(
            f"not allowed to signal process {pid}: {exc.strerror}"
        ) from exc
    return pidfd


def _cfs_window(share: float, period_s: float) -> tuple[int, int]:
    """Return ``(quota_us, period_us)`` for ``share``.

    The period is stretched when the quota would fall below the kernel's
    1 ms minimum.
    """
    period_us = round(period_s * 1e6)
    if share * period_us < _MIN_QUOTA_US:
        period_us = math.ceil(_MIN_QUOTA_US / share)
    return round(share * period_us), period_us


def _parse_mounts(text: str) -> tuple[Path | None, Path | None, Path | None]:
    """Find the unified, v1 ``cpu`` and v1 ``memory`` mount points in ``text``.

    ``text`` is ``/proc/mounts``; the first mount of each kind counts.
    """
    v2: Path | None = None
    cpu: Path | None = None
    memory: Path | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        where = Path(_unescape_mount(fields[1]))
        if fields[2] == "cgroup2" and v2 is None:
            v2 = where
        elif fields[2] == "cgroup":
            options = fields[3].split(",")
            if "cpu" in options and cpu is None:
                cpu = where
            if "memory" in options and memory is None:
                memory = where
    return v2, cpu, memory


def _unescape_mount(text: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of ``/proc/mounts``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _cgroup_path(pid: int | Literal["self"], controller: str | None) -> str | None:
    """The path of ``pid``'s group in one hierarchy, from ``/proc/<pid>/cgroup``.

    ``controller`` ``None`` asks for the unified hierarchy.
    """
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except FileNotFoundError as exc:
        raise TestbedError(f"no process with pid {pid} to limit") from exc
    for line in text.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if controller is None and hierarchy == "0" and not controllers:
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _own_group(mount: Path | None, controller: str) -> Path | None:
    """The directory of this process's own group in a v1 hierarchy."""
    if mount is None:
        return None
    path = _cgroup_path("self", controller)
    group = mount / path.lstrip("/") if path else mount
    return group if group.is_dir() else mount


def _home_group(pid: int, mount: Path | None, controller: str | None) -> Path:
    """The directory of the group ``pid`` is in now, to move it back to later."""
    assert mount is not None
    path = _cgroup_path(pid, controller)
    group = mount / path.lstrip("/") if path else mount
    return group if group.is_dir() else mount


def _find_groups(root: Path, start: str) -> Iterator[Path]:
    """Yield directories under ``root`` whose name begins with ``start``."""
    for here, dirs, _files in os.walk(root):
        matched = [d for d in dirs if d.startswith(start)]
        dirs[:] = [d for d in dirs if not d.startswith(start)]
        for name in sorted(matched):
            yield Path(here) / name


def _remove_group(group: Path, *, home: Path) -> None:
    """Move every process in ``group`` to ``home`` and remove ``group``."""
    if not group.is_dir():
        return
    try:
        procs = [int(p) for p in _read(group / "cgroup.procs").split()]
    except FileNotFoundError:
        return
    for pid in procs:
        command = _write_command(home / "cgroup.procs", str(pid))
        _log.debug("%s", command)
        try:
            _write(home / "cgroup.procs", str(pid))
        except ProcessLookupError:
            continue
        except OSError as exc:
            raise TestbedError(
                f"could not move process {pid} out of {group} at `{command}`: "
                f"{exc.strerror} (errno {exc.errno})"
            ) from exc

    # An exiting process can keep a group busy for a moment after it left
    # cgroup.procs.
    _log.debug("rmdir %s", shlex.quote(str(group)))
    deadline = time.monotonic() + _RMDIR_TIMEOUT_S
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                try:
                    left = _read(group / "cgroup.procs").split()
                except OSError:
                    left = []
                raise TestbedError(
                    f"could not remove cgroup {group}: {exc.strerror} "
                    f"(errno {exc.errno}); processes still in it: "
                    f"{', '.join(left) or 'none'}"
                ) from exc
            time.sleep(0.01)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    """Write ``value`` to a cgroup file in one ``write`` call, as the kernel wants."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_command(path: Path, value: str) -> str:
    return f"echo {shlex.quote(value)} > {shlex.quote(str(path))}"


@dataclass(frozen=True, slots=True)
class SeenLimit:
    """The CPU and memory limits a process finds on itself.

    Attributes
    ----------
    cpu_share:
        Quota over period of its cpu cgroup, or ``None`` when unlimited or not
        in a cgroup with a quota (``cpulimit`` and ``sigstop`` leave no trace
        a process can read).
    memory_bytes:
        Its memory cgroup's limit, or ``None`` when unlimited.
    """

    cpu_share: float | None
    memory_bytes: int | None


def seen_limit(capabilities: LimitCapabilities | None = None) -> SeenLimit:
    """Read the limits of this process's own cgroups (v2 first, then v1)."""
    caps = capabilities or detect_capabilities()
    cpu_share: float | None = None
    memory_bytes: int | None = None

    unified = _cgroup_path("self", None)
    if caps.cgroup_v2_path is not None and unified is not None:
        group = caps.cgroup_v2_path / unified.lstrip("/")
        quota, _, period = _read_quiet(group / "cpu.max").partition(" ")
        if quota.isdigit() and period.isdigit():
            cpu_share = int(quota) / int(period)
        memory = _read_quiet(group / "memory.max")
        if memory.isdigit():
            memory_bytes = int(memory)

    cpu_group = _own_group(caps.cgroup_v1_cpu_path, "cpu")
    if cpu_share is None and cpu_group is not None:
        quota_text = _read_quiet(cpu_group / "cpu.cfs_quota_us")
        period_text = _read_quiet(cpu_group / "cpu.cfs_period_us")
        if quota_text.isdigit() and period_text.isdigit():
            cpu_share = int(quota_text) / int(period_text)
    memory_group = _own_group(caps.cgroup_v1_memory_path, "memory")
    if memory_bytes is None and memory_group is not None:
        limit = _read_quiet(memory_group / "memory.limit_in_bytes")
        # v1 reports "no limit" as a huge page-aligned number.
        if limit.isdigit() and int(limit) < 2**62:
            memory_bytes = int(limit)
    return SeenLimit(cpu_share, memory_bytes)


def _read_quiet(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
