"""What this machine offers the testbed, found by trying.

:func:`examine` probes the machine once: who runs splitlab, the kernel, what
``tc`` can do inside a network namespace (netem, htb, tbf), IFB, nftables,
``/dev/net/tun``, the cgroup hierarchies and their controllers, whether a
CFS period can be set, the load and network tools, ``asyncssh`` and a
browser.  The kernel's abilities are tested, not guessed: the probe makes a
scratch network namespace (and, for the CFS period, a scratch cgroup), tries
the operation there and removes what it made.  From the probes it says, per
backend, what a run will use.  Nothing on the machine is left changed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import platform
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitlab.limit import LimitCapabilities, detect_capabilities

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10.0
_V1_CONTROLLERS = ("cpu", "memory", "cpuset")
# A period the kernel accepts (1 ms to 1 s) that differs from its default.
_PROBE_PERIOD_US = 20_000


@dataclass(frozen=True, slots=True)
class Probe:
    """One thing the machine has or lacks.

    Attributes
    ----------
    name:
        What was probed (``tc netem``, ``cgroup v1 cpu``...).
    ok:
        Whether it is there and works.
    detail:
        The version, path or error that explains ``ok``.
    """

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class BackendPlan:
    """What a backend will use on this machine.

    Attributes
    ----------
    backend:
        ``local``, ``netns`` or ``ssh``.
    usable:
        Whether the backend can run here at all.
    uses:
        One line per concern (CPU, delay, rate...) saying the mechanism.
    """

    backend: str
    usable: bool
    uses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MachineReport:
    """Every probe, and each backend's plan."""

    probes: tuple[Probe, ...]
    backends: tuple[BackendPlan, ...]

    def probe(self, name: str) -> Probe:
        """The probe called ``name``; :class:`KeyError` if there is none."""
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise KeyError(name)

    def ok(self, name: str) -> bool:
        """Whether the probe called ``name`` succeeded."""
        return self.probe(name).ok

    def to_json(self) -> dict[str, object]:
        """The report as plain data."""
        return {
            "probes": [
                {"name": p.name, "ok": p.ok, "detail": p.detail} for p in self.probes
            ],
            "backends": [
                {"backend": b.backend, "usable": b.usable, "uses": list(b.uses)}
                for b in self.backends
            ],
        }


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    logger.debug("%s", shlex.join(command))
    return subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def _error(result: subprocess.CompletedProcess[str]) -> str:
    text = " ".join((result.stderr or result.stdout).split())
    return text or f"exit code {result.returncode}"


def _tool(name: str, *candidates: str, version: Sequence[str] = ()) -> Probe:
    for candidate in candidates or (name,):
        path = shutil.which(candidate)
        if path is None:
            continue
        detail = path
        if version:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                result = _run([path, *version])
                first = (result.stdout or result.stderr).strip().splitlines()
                if result.returncode == 0 and first:
                    detail = f"{path} ({first[0].strip()})"
        return Probe(name, True, detail)
    return Probe(name, False, f"no {' or '.join(candidates or (name,))} on PATH")


def _module(name: str) -> Probe:
    spec = importlib.util.find_spec(name)
    if spec is None:
        return Probe(name, False, f"the Python package {name} is not installed")
    return Probe(name, True, str(spec.origin))


class _ScratchNamespace:
    """A network namespace that exists for the probes and is removed after."""

    def __init__(self) -> None:
        self.name = f"splitlab-doctor-{os.getpid()}"
        self.error: str | None = None

    def __enter__(self) -> _ScratchNamespace:
        result = _run(["ip", "netns", "add", self.name])
        if result.returncode != 0:
            self.error = _error(result)
            return self
        up = _run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        if up.returncode != 0:
            self.error = _error(up)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.error is None or Path(f"/run/netns/{self.name}").exists():
            _run(["ip", "netns", "delete", self.name])

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.name, *command])


def _qdisc_probe(namespace: _ScratchNamespace, kind: str, *args: str) -> Probe:
    name = f"tc {kind}"
    if namespace.error is not None:
        return Probe(name, False, f"no scratch namespace: {namespace.error}")
    added = namespace.run("tc", "qdisc", "add", "dev", "lo", "root", kind, *args)
    if added.returncode != 0:
        return Probe(name, False, _error(added))
    namespace.run("tc", "qdisc", "del", "dev", "lo", "root")
    return Probe(name, True, f"added and removed a {kind} qdisc in a scratch netns")


def _network_probes(is_root: bool) -> list[Probe]:
    names = ("network namespaces", "tc netem", "tc htb", "tc tbf", "veth", "IFB",
             "nftables")  # fmt: skip
    if shutil.which("ip") is None:
        return [
            Probe(n, False, "no ip on PATH (Debian package iproute2)") for n in names
        ]
    if not is_root:
        return [Probe(n, False, "not probed: needs root") for n in names]
    probes = []
    with _ScratchNamespace() as namespace:
        probes.append(
            Probe(
                "network namespaces",
                namespace.error is None,
                namespace.error or "made and removed a scratch namespace",
            )
        )
        if shutil.which("tc") is None:
            probes += [
                Probe(f"tc {kind}", False, "no tc on PATH")
                for kind in ("netem", "htb", "tbf")
            ]
        else:
            probes.append(_qdisc_probe(namespace, "netem", "delay", "1ms"))
            probes.append(_qdisc_probe(namespace, "htb", "default", "1"))
            probes.append(
                _qdisc_probe(
                    namespace,
                    "tbf",
                    "rate",
                    "1mbit",
                    "burst",
                    "32kbit",
                    "latency",
                    "50ms",
                )
            )
        probes.append(_link_probe(namespace, "veth", "veth"))
        probes.append(_link_probe(namespace, "IFB", "ifb"))
        probes.append(_nft_probe(namespace))
    return probes


def _link_probe(namespace: _ScratchNamespace, name: str, kind: str) -> Probe:
    if namespace.error is not None:
        return Probe(name, False, f"no scratch namespace: {namespace.error}")
    added = _run(["ip", "-n", namespace.name, "link", "add", "probe0", "type", kind])
    if added.returncode != 0:
        return Probe(name, False, _error(added))
    _run(["ip", "-n", namespace.name, "link", "delete", "probe0"])
    return Probe(name, True, f"made and removed a {kind}-type link in a scratch netns")


def _nft_probe(namespace: _ScratchNamespace) -> Probe:
    if shutil.which("nft") is None:
        return Probe("nftables", False, "no nft on PATH (Debian package nftables)")
    if namespace.error is not None:
        return Probe("nftables", False, f"no scratch namespace: {namespace.error}")
    added = namespace.run("nft", "add", "table", "inet", "splitlab_doctor")
    if added.returncode != 0:
        return Probe("nftables", False, _error(added))
    namespace.run("nft", "delete", "table", "inet", "splitlab_doctor")
    return Probe("nftables", True, "made and removed a table in a scratch netns")


def _v1_mounts() -> dict[str, Path]:
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[2] == "cgroup":
                for option in fields[3].split(","):
                    if option in _V1_CONTROLLERS and option not in mounts:
                        mounts[option] = Path(fields[1])
    return mounts


def _cgroup_probes(capabilities: LimitCapabilities) -> list[Probe]:
    probes = []
    v2 = capabilities.cgroup_v2_path
    for controller in ("cpu", "memory"):
        name = f"cgroup v2 {controller}"
        if v2 is None:
            probes.append(Probe(name, False, "no cgroup2 hierarchy mounted"))
        elif controller in capabilities.cgroup_v2_controllers:
            probes.append(Probe(name, True, f"{v2}/cgroup.controllers"))
        else:
            offered = " ".join(sorted(capabilities.cgroup_v2_controllers)) or "none"
            probes.append(
                Probe(name, False, f"{v2}/cgroup.controllers offers: {offered}")
            )
    mounts = _v1_mounts()
    for controller in _V1_CONTROLLERS:
        where = mounts.get(controller)
        probes.append(
            Probe(
                f"cgroup v1 {controller}",
                where is not None,
                str(where) if where else "no v1 hierarchy with this controller",
            )
        )
    probes.append(_cfs_period_probe(capabilities, mounts.get("cpu")))
    return probes


def _cfs_period_probe(capabilities: LimitCapabilities, v1_cpu: Path | None) -> Probe:
    name = "cfs period settable"
    if not capabilities.is_root:
        return Probe(name, False, "not probed: needs root")
    if v1_cpu is not None:
        group, file = v1_cpu / f"splitlab-doctor-{os.getpid()}", "cpu.cfs_period_us"
        value = str(_PROBE_PERIOD_US)
    elif v2 := (
        capabilities.cgroup_v2_path
        if "cpu" in capabilities.cgroup_v2_controllers
        else None
    ):
        group, file = v2 / f"splitlab-doctor-{os.getpid()}", "cpu.max"
        value = f"max {_PROBE_PERIOD_US}"
    else:
        return Probe(name, False, "no cgroup hierarchy with the cpu controller")
    logger.debug("mkdir %s", shlex.quote(str(group)))
    try:
        group.mkdir()
    except OSError as error:
        return Probe(name, False, f"cannot make {group}: {error.strerror}")
    try:
        logger.debug("echo %s > %s", shlex.quote(value), shlex.quote(str(group / file)))
        (group / file).write_text(value)
        seen = (group / file).read_text().split()
        if str(_PROBE_PERIOD_US) not in seen:
            return Probe(name, False, f"{file} reads {' '.join(seen)} after writing")
        return Probe(
            name, True, f"{file} took {_PROBE_PERIOD_US} us in a scratch group"
        )
    except OSError as error:
        return Probe(name, False, f"cannot write {file}: {error.strerror}")
    finally:
        logger.debug("rmdir %s", shlex.quote(str(group)))
        with contextlib.suppress(OSError):
            group.rmdir()


def examine() -> MachineReport:
    """Probe this machine and plan every backend.

    Returns
    -------
    MachineReport
        The probes and the plans; nothing on the machine is left changed.
    """
    capabilities = detect_capabilities()
    probes = [
        Probe(
            "root",
            capabilities.is_root,
            f"uid {os.geteuid()}" + ("" if capabilities.is_root else " (not root)"),
        ),
        Probe("kernel", True, f"{platform.system()} {platform.release()}"),
        *_network_probes(capabilities.is_root),
        Probe(
            "/dev/net/tun",
            Path("/dev/net/tun").exists(),
            "present" if Path("/dev/net/tun").exists() else "missing",
        ),
        *_cgroup_probes(capabilities),
        _tool("stress-ng", version=["--version"]),
        _tool("cpulimit"),
        _tool("ping"),
        _tool("sshd", "sshd"),
        _module("asyncssh"),
        _tool("chromium", "chromium", "chromium-browser", "google-chrome"),
    ]
    report = MachineReport(tuple(probes), ())
    return MachineReport(report.probes, plan_backends(report, capabilities))


def plan_backends(
    report: MachineReport, capabilities: LimitCapabilities
) -> tuple[BackendPlan, ...]:
    """Say what each backend will use, given the probes."""
    available = capabilities.available()
    cpu = {
        "cgroup-v2": "CPU by cgroup v2 cpu.max",
        "cgroup-v1": "CPU by cgroup v1 cfs quota",
        "cpulimit": "CPU by cpulimit",
        "sigstop": "CPU by SIGSTOP/SIGCONT duty cycles",
    }[available[0]]
    memory = (
        "memory by cgroup"
        if any(m.startswith("cgroup") for m in available)
        else "no memory limit (needs a cgroup memory controller and root)"
    )
    local = BackendPlan(
        "local",
        True,
        (cpu, memory, "delay, rate and jitter shaped in the transport"),
    )

    netns_missing = [
        name
        for name in ("root", "network namespaces", "veth", "tc htb")
        if not report.ok(name)
    ]
    delay = (
        "delay by tc netem"
        if report.ok("tc netem")
        else "delay by userspace forwarder (no netem)"
    )
    rate = "rate by tc htb" if report.ok("tc htb") else "rate: no tc htb"
    loss = (
        "loss by nftables"
        if report.ok("nftables")
        else "loss: no nftables" + (", netem" if report.ok("tc netem") else "")
    )
    load = (
        "background load by stress-ng"
        if report.ok("stress-ng")
        else "background load: no stress-ng"
    )
    netns = BackendPlan(
        "netns",
        not netns_missing,
        (
            *(["missing: " + ", ".join(netns_missing)] if netns_missing else []),
            delay,
            rate,
            loss,
            cpu,
            load,
        ),
    )

    ssh_ok = report.ok("asyncssh")
    ssh = BackendPlan(
        "ssh",
        ssh_ok,
        (
            "connects by asyncssh" if ssh_ok else "missing: the asyncssh package",
            "on each board: tc, stress-ng and cpulimit there, checked at deploy",
            "RTT by ping" if report.ok("ping") else "RTT by TCP connect (no ping)",
            "a local sshd for loopback trials"
            if report.ok("sshd")
            else "no local sshd (only real boards)",
        ),
    )
    return (local, netns, ssh)
