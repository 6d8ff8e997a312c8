"""The ``ssh`` testbed: real boards (Raspberry Pi class) reached over SSH.

Each device of the scenario is a board named by its ``ssh`` section.  For a
run, :class:`SshTestbed` connects to every board with its key (the host key
checked against ``known_hosts``), makes a run directory ``WORKDIR/<prefix>``
there and uploads what the device agent needs: splitlab's own package
source (pure Python), the trained weights and the held-out data as ``.npz``
files that numpy reads without pickle, and a user's model file if the
scenario names one.  It then writes and runs four bash scripts per board:

``link-<device>.sh``
    Shapes the board's traffic to the base station's port: ``tc`` htb and tbf
    on the interface that routes to the base station (egress) and on an IFB
    device fed from the interface's ingress, with ``netem`` delay where the board's
    kernel has it; whatever the kernel cannot shape, the agent's transport
    emulates (see :class:`splitlab.agent.AgentConfig`).
``limit-<device>.sh``
    Holds the agent to the device's ``cpu_share`` and ``memory_mb`` with
    cgroup v2 (``cpu.max``, ``memory.max``), else cgroup v1, else (CPU
    only) ``cpulimit``, else not at all, and starts the background load
    (``stress-ng``) if one is asked.
``start-<device>.sh``
    Puts itself under that limit and becomes the agent
    (``python -m splitlab.agent``) with its configuration on stdin.
``teardown-<device>.sh``
    Stops every process of the run on the board and undoes the limit and
    the shaping.

The scripts are logged at debug level, stored with the run's node rows and
written to the run's folder, so they can be replayed by hand.  Everything
is removed again when the testbed closes, after success, error or Ctrl-C.
Nothing received from a board is ever executed or unpickled: its replies are
parsed as numbers and a few known words.

The base station stays on this machine and listens on
``base_station.address``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import shlex
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from subprocess import Popen
from typing import Any, TypeVar

import asyncssh

import splitlab
from splitlab.data import load_held_out, write_npz
from splitlab.errors import ConfigError, TestbedError
from splitlab.models import MODELS
from splitlab.scenario import DeviceConfig, LinkConfig, Scenario, SshConfig
from splitlab.station import StationConfig
from splitlab.testbed import PREFIX_VARIABLE, LocalTestbed
from splitlab.usercode import is_reference
from splitlab.weights import write_npz_weights

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 15.0
COMMAND_TIMEOUT_S = 60.0
UPLOAD_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# The period of the CFS window a board's CPU share is enforced over.
PERIOD_US = 10_000
MIN_QUOTA_US = 1_000
# Every process a run starts on a board carries the run's prefix and its
# device's name, so the teardown finds exactly those.
DEVICE_VARIABLE = "SPLITLAB_DEVICE"
# Clock offsets are measured this many times; beyond CLOCK_WARN_S they are
# worth a warning, as they enter every measured transmission time.
CLOCK_PROBES = 5
CLOCK_WARN_S = 0.002
# Python 3.11 as major * 100 + minor, and what a board's Python must import.
MIN_PYTHON = 311
PYTHON_PROBE = "import sys, numpy, torch; print('python=%d%02d' % sys.version_info[:2])"
# The agent's log lines kept for the run's folder.
LOG_LINES = 10_000

# A board's tbf lets this much through at once, and queues this long.
TBF_MIN_BURST_BYTES = 2 * 1514
TBF_BURST_S = 0.0005
TBF_QUEUE_S = 2.0

LIMIT_MECHANISMS = ("cgroup-v2", "cgroup-v1", "cpulimit", "none")
RATE_SHAPERS = ("tc", "transport")
DELAY_SHAPERS = ("netem", "transport", "none")


@dataclass(frozen=True, slots=True)
class BoardLimit:
    """The limit a board's agent runs under, as the board reported it.

    Attributes
    ----------
    mechanism:
        ``cgroup-v2``, ``cgroup-v1`` or ``none``.
    cpu_share:
        The enforced share of one core, or ``None`` when the CPU is not limited.
    memory_bytes:
        The memory limit the kernel reports back, or ``None``.
    commands:
        Every line of the scripts that set up the board, for the run's record.
    """

    mechanism: str
    cpu_share: float | None
    memory_bytes: int | None
    commands: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LinkShaping:
    """How a board's link is realised.

    Attributes
    ----------
    interface:
        The board's interface towards the base station, or ``None``.
    rate:
        ``tc`` (htb on the board) or ``transport`` (the agent paces its sends).
    delay:
        ``netem``, ``transport`` or ``none`` (no latency or jitter asked).
    """

    interface: str | None
    rate: str
    delay: str

    @property
    def transport(self) -> str:
        """What the agent's transport must still emulate (``AgentConfig.transport``)."""
        if self.rate == "transport":
            return "all"
        return "delay" if self.delay == "transport" else "none"


@dataclass(frozen=True, slots=True)
class BoardProcess:
    """A device agent started on a board.

    Attributes
    ----------
    config:
        The device.
    pid:
        The agent's process id on the board.
    limit:
        The CPU and memory limit it runs under.
    shaping:
        How its link is shaped.
    clock_offset_s:
        The board's clock minus this machine's, measured over SSH (to within
        half the round trip), or ``None`` if the board's ``date`` cannot tell.
        Measured delays subtract timestamps of both clocks.
    """

    config: DeviceConfig
    pid: int
    limit: BoardLimit
    shaping: LinkShaping
    clock_offset_s: float | None = None


@dataclass(frozen=True, slots=True)
class BoardScripts:
    """The bash scripts that set up and tear down one board for one run."""

    link: str
    limit: str
    start: str
    teardown: str

    def named(self, device: str) -> dict[str, str]:
        """The scripts under their file names on the board."""
        return {
            f"link-{device}.sh": self.link,
            f"limit-{device}.sh": self.limit,
            f"start-{device}.sh": self.start,
            f"teardown-{device}.sh": self.teardown,
        }


# --- the scripts (pure) ------------------------------------------------------


def cfs_quota(share: float) -> tuple[int, int]:
    """``(quota_us, period_us)`` for a CPU share; the period grows past 1 ms quota."""
    period_us = PERIOD_US
    if share * period_us < MIN_QUOTA_US:
        period_us = math.ceil(MIN_QUOTA_US / share)
    return round(share * period_us), period_us


def tbf_burst_bytes(rate_bit: int) -> int:
    """The bucket of a board's tbf: two full frames, or 0.5 ms at the rate."""
    return max(TBF_MIN_BURST_BYTES, round(rate_bit / 8 * TBF_BURST_S))


def tbf_limit_bytes(rate_bit: int) -> int:
    """The queue of a board's tbf: 2 s at the rate, within 1 to 64 MiB."""
    return min(64 * 2**20, max(2**20, round(rate_bit / 8 * TBF_QUEUE_S)))


def link_script(
    *, prefix: str, device: str, link: LinkConfig, station: str, port: int
) -> str:
    """The script that shapes a board's traffic to and from the station's port.

    ``bash link-DEVICE.sh up`` prints ``interface=``, ``rate=`` and ``delay=``
    lines; ``down`` removes the qdiscs and the IFB device.
    """
    address = ipaddress.ip_address(station)
    protocol, match, width = (
        ("ip", "ip", 32) if address.version == 4 else ("ipv6", "ip6", 128)
    )
    rate_bit = round(link.rate_mbps * 1e6)
    latency_us = round(link.latency_ms * 1e3)
    jitter_us = round(link.jitter_ms * 1e3)
    ifb = _ifb_name(prefix, device)
    return f"""#!/usr/bin/env bash
# splitlab run {prefix}, device {device}: the link to the base station
# {station} port {port}: {link.rate_mbps} Mbit/s, {link.latency_ms} ms latency,
# {link.jitter_ms} ms jitter.  Only traffic to and from that port is shaped.
# Usage: bash link-{device}.sh up | down   (as root)
set -u
station={address}
port={port}
rate_bit={rate_bit}
burst={tbf_burst_bytes(rate_bit)}
limit={tbf_limit_bytes(rate_bit)}
latency_us={latency_us}
jitter_us={jitter_us}
ifb={ifb}

interface() {{
    ip -o route get "$station" \\
        | awk '{{ for (i = 1; i < NF; i++) if ($i == "dev") {{ print $(i + 1); exit }}
            }}'
}}

up() {{
    dev=$(interface)
    [ -n "$dev" ] || return 1
    echo "interface=$dev"
    # Egress: the port's traffic in an htb class; everything else (ssh
    # included) goes out unclassified and unshaped.  The class itself is
    # wide: its tbf paces the rate, because tbf cuts the large segments of
    # TCP offload into packets where htb would pass one whole after idling.
    tc qdisc add dev "$dev" root handle 1: htb || return 1
    tc class add dev "$dev" parent 1: classid 1:10 htb rate 10gbit || return 1
    tc qdisc add dev "$dev" parent 1:10 handle 20: tbf rate "${{rate_bit}}bit" \\
        burst "$burst" limit "$limit" || return 1
    tc filter add dev "$dev" parent 1: protocol {protocol} prio 1 u32 \\
        match {match} dst "$station/{width}" match {match} dport "$port" 0xffff \\
        flowid 1:10 || return 1
    # Ingress: redirected through an IFB device paced the same way.
    ip link add "$ifb" type ifb || return 1
    ip link set "$ifb" up || return 1
    tc qdisc add dev "$ifb" root handle 1: htb || return 1
    tc class add dev "$ifb" parent 1: classid 1:10 htb rate 10gbit || return 1
    tc qdisc add dev "$ifb" parent 1:10 handle 20: tbf rate "${{rate_bit}}bit" \\
        burst "$burst" limit "$limit" || return 1
    tc filter add dev "$ifb" parent 1: protocol {protocol} prio 1 u32 \\
        match u32 0 0 flowid 1:10 || return 1
    tc qdisc add dev "$dev" handle ffff: ingress || return 1
    tc filter add dev "$dev" parent ffff: protocol {protocol} prio 1 u32 \\
        match {match} src "$station/{width}" match {match} sport "$port" 0xffff \\
        action mirred egress redirect dev "$ifb" || return 1
    echo "rate=tc"
    # The one-way latency on the uplink, where the kernel has netem.
    if [ "$latency_us" -eq 0 ] && [ "$jitter_us" -eq 0 ]; then
        echo "delay=none"
    elif [ "$jitter_us" -gt 0 ] && tc qdisc add dev "$dev" parent 20:1 handle 30: \\
            netem delay "${{latency_us}}us" "${{jitter_us}}us" distribution normal; then
        echo "delay=netem"
    elif [ "$jitter_us" -eq 0 ] && tc qdisc add dev "$dev" parent 20:1 handle 30: \\
            netem delay "${{latency_us}}us"; then
        echo "delay=netem"
    else
        echo "delay=transport"
    fi
}}

down() {{
    dev=$(interface)
    if [ -n "$dev" ]; then
        tc qdisc del dev "$dev" root 2>/dev/null
        tc qdisc del dev "$dev" handle ffff: ingress 2>/dev/null
    fi
    ip link del "$ifb" 2>/dev/null
    return 0
}}

case "${{1:-}}" in
    up)
        if ! up; then
            down
            echo "rate=transport"
            echo "delay=transport"
        fi
        ;;
    down) down ;;
    *) echo "usage: $0 up | down" >&2; exit 2 ;;
esac
"""


def limit_script(
    *,
    prefix: str,
    device: str,
    run_dir: str,
    cpu_share: float | None,
    memory_bytes: int | None,
    load_workers: int = 0,
    load_percent: int = 0,
) -> str:
    """The script that holds an agent to its CPU share and memory on a board.

    ``bash limit-DEVICE.sh up PID`` limits ``PID`` and starts the background
    load, ``apply PID`` only limits, ``down`` removes the groups.  ``up`` and
    ``apply`` print ``mechanism=``, ``cpu_share=``, ``memory_bytes=`` and
    ``load=`` lines.
    """
    quota_us, period_us = cfs_quota(cpu_share) if cpu_share else (0, PERIOD_US)
    quota = str(quota_us) if cpu_share else ""
    memory = str(memory_bytes) if memory_bytes else ""
    run = shlex.quote(run_dir)
    return f"""#!/usr/bin/env bash
# splitlab run {prefix}, device {device}: the agent's CPU share
# ({cpu_share if cpu_share else "not limited"}) and memory
# ({memory_bytes if memory_bytes else "not limited"} bytes), and the background load.
# Usage: bash limit-{device}.sh up PID | apply PID | down   (as root)
set -u
group=splitlab-{prefix}-{device}
quota_us={quota}
period_us={period_us}
memory_bytes={memory}
load_workers={load_workers}
load_percent={load_percent}
state={run}/limit-{device}.groups
limiter={run}/limit-{device}.cpulimit
tag={PREFIX_VARIABLE}={prefix}
device={DEVICE_VARIABLE}={device}

# The mount point of a v1 controller, and this process's group in it.
v1_mount() {{
    awk -v c="$1" '$3 == "cgroup" {{ n = split($4, o, ",")
        for (i = 1; i <= n; i++) if (o[i] == c) {{ print $2; exit }} }}' /proc/mounts
}}
v1_own() {{
    awk -F: -v c="$1" '{{ n = split($2, o, ",")
        for (i = 1; i <= n; i++) if (o[i] == c) {{ print $3; exit }} }}' \\
        /proc/self/cgroup
}}

apply_v2() {{
    root=/sys/fs/cgroup
    [ -f "$root/cgroup.controllers" ] || return 1
    grep -qw cpu "$root/cgroup.controllers" || return 1
    if [ -n "$memory_bytes" ] && ! grep -qw memory "$root/cgroup.controllers"; then
        return 1
    fi
    grep -qw cpu "$root/cgroup.subtree_control" \\
        || echo +cpu > "$root/cgroup.subtree_control" || return 1
    if [ -n "$memory_bytes" ]; then
        grep -qw memory "$root/cgroup.subtree_control" \\
            || echo +memory > "$root/cgroup.subtree_control" || return 1
    fi
    g="$root/$group"
    mkdir -p "$g" || return 1
    echo "$g" >> "$state"
    if [ -n "$quota_us" ]; then
        echo "$quota_us $period_us" > "$g/cpu.max" || return 1
    fi
    if [ -n "$memory_bytes" ]; then
        echo "$memory_bytes" > "$g/memory.max" || return 1
        echo "memory_bytes=$(cat "$g/memory.max")"
    fi
    echo "$1" > "$g/cgroup.procs" || return 1
    echo "mechanism=cgroup-v2"
}}

apply_v1() {{
    mount=$(v1_mount cpu)
    [ -n "$mount" ] || return 1
    if [ -n "$memory_bytes" ]; then
        memory_mount=$(v1_mount memory)
        [ -n "$memory_mount" ] || return 1
    fi
    # Inside the caller's own group, so the agent never escapes a limit the
    # caller runs under.
    own=$(v1_own cpu)
    g="$mount${{own%/}}/$group"
    mkdir -p "$g" || return 1
    echo "$g" >> "$state"
    if [ -n "$quota_us" ]; then
        echo "$period_us" > "$g/cpu.cfs_period_us" || return 1
        echo "$quota_us" > "$g/cpu.cfs_quota_us" || return 1
    fi
    echo "$1" > "$g/cgroup.procs" || return 1
    if [ -n "$memory_bytes" ]; then
        own=$(v1_own memory)
        m="$memory_mount${{own%/}}/$group"
        mkdir -p "$m" || return 1
        echo "$m" >> "$state"
        echo "$memory_bytes" > "$m/memory.limit_in_bytes" || return 1
        echo "$1" > "$m/cgroup.procs" || return 1
        echo "memory_bytes=$(cat "$m/memory.limit_in_bytes")"
    fi
    echo "mechanism=cgroup-v1"
}}

apply() {{
    if [ -z "$quota_us" ] && [ -z "$memory_bytes" ]; then
        echo "mechanism=none"
        return 0
    fi
    apply_v2 "$1" && return 0
    down
    apply_v1 "$1" && return 0
    down
    apply_cpulimit "$1" && return 0
    echo "mechanism=none"
}}

# Without cgroups (no root, no sudo): cpulimit, which needs only the right to
# signal the agent, holds its CPU alone; it ends when the agent ends.
apply_cpulimit() {{
    [ -n "$quota_us" ] || return 1
    command -v cpulimit > /dev/null || return 1
    if [ -f "$limiter" ]; then
        kill "$(cat "$limiter")" 2> /dev/null
    fi
    env "$tag" "$device" cpulimit -z -p "$1" \\
        -l "$(( (quota_us * 100 + period_us / 2) / period_us ))" \\
        < /dev/null > /dev/null 2>&1 &
    echo $! > "$limiter"
    echo "mechanism=cpulimit"
}}

load() {{
    [ "$load_workers" -gt 0 ] || {{ echo "load=none"; return 0; }}
    if ! command -v stress-ng > /dev/null; then
        echo "load=missing"
        return 0
    fi
    # A watcher ends the load when the agent ends, even if nobody runs the
    # teardown.
    env "$tag" "$device" setsid bash -c '
        stress-ng --cpu "$2" --cpu-load "$3" &
        load=$!
        while kill -0 "$1" 2> /dev/null && kill -0 "$load" 2> /dev/null; do
            sleep 1
        done
        kill "$load" 2> /dev/null
        wait' load "$1" "$load_workers" "$load_percent" \\
        < /dev/null > /dev/null 2>&1 &
    echo "load=stress-ng"
}}

down() {{
    if [ -f "$limiter" ]; then
        kill "$(cat "$limiter")" 2> /dev/null
        rm -f "$limiter"
    fi
    [ -f "$state" ] || return 0
    # Deepest first; a group empties a moment after its processes die.
    for g in $(sort -r -u "$state"); do
        for _ in $(seq 50); do
            [ -d "$g" ] || break
            rmdir "$g" 2>/dev/null && break
            sleep 0.1
        done
    done
    rm -f "$state"
}}

case "${{1:-}}" in
    up) apply "$2"; load "$2" ;;
    apply) apply "$2" ;;
    down) down ;;
    *) echo "usage: $0 up PID | apply PID | down" >&2; exit 2 ;;
esac
"""


def start_script(
    *, prefix: str, device: str, run_dir: str, python: str, sudo: str
) -> str:
    """The script that limits itself and becomes the device agent.

    It prints ``pid=``, the limit script's lines and ``ready``, then ``exec``
    s the agent, which reads its configuration on standard input.
    """
    run = shlex.quote(run_dir)
    return f"""#!/usr/bin/env bash
# splitlab run {prefix}, device {device}: start the device agent under its
# limit; the agent reads its JSON configuration on standard input.
set -u
echo "pid=$$"
{sudo}bash {run}/limit-{device}.sh up $$ < /dev/null || exit 97
cd {run} || exit 97
echo ready
exec env PYTHONPATH={run} {PREFIX_VARIABLE}={prefix} {DEVICE_VARIABLE}={device} \\
    SPLITLAB_LOG=INFO {shlex.quote(python)} -m splitlab.agent
"""


def teardown_script(*, prefix: str, device: str, run_dir: str, sudo: str) -> str:
    """The script that stops the run's processes on a board and undoes its setup."""
    run = shlex.quote(run_dir)
    return f"""#!/usr/bin/env bash
# splitlab run {prefix}, device {device}: stop the agent and the load, then
# remove the limit and the link shaping.
set -u
tag={PREFIX_VARIABLE}={prefix}
device={DEVICE_VARIABLE}={device}

tagged() {{
    for f in /proc/[0-9]*/environ; do
        p=${{f#/proc/}}
        p=${{p%/environ}}
        env=$(tr '\\0' '\\n' < "$f" 2> /dev/null) || continue
        if printf '%s\\n' "$env" | grep -qxF "$tag" \\
                && printf '%s\\n' "$env" | grep -qxF "$device"; then
            echo "$p"
        fi
    done
}}

pids=$(tagged)
[ -z "$pids" ] || {sudo}kill -TERM $pids 2> /dev/null
for _ in $(seq 50); do
    pids=$(tagged)
    [ -z "$pids" ] && break
    sleep 0.1
done
[ -z "$pids" ] || {sudo}kill -KILL $pids 2> /dev/null
{sudo}bash {run}/limit-{device}.sh down
{sudo}bash {run}/link-{device}.sh down
"""


def board_scripts(
    device: DeviceConfig,
    *,
    prefix: str,
    run_dir: str,
    station: str,
    port: int,
    python: str,
    sudo: str,
    cpu_share: float | None = None,
) -> BoardScripts:
    """Every script one board runs for a run.

    ``cpu_share`` replaces the device's own (a load change during the run).
    On a board only an explicit ``cpu_share`` and ``memory_mb`` are enforced:
    a device ``class`` describes the board and limits nothing.
    """
    load = device.load
    return BoardScripts(
        link=link_script(
            prefix=prefix,
            device=device.name,
            link=device.link,
            station=station,
            port=port,
        ),
        limit=limit_script(
            prefix=prefix,
            device=device.name,
            run_dir=run_dir,
            cpu_share=cpu_share if cpu_share is not None else device.cpu_share,
            memory_bytes=(
                device.memory_mb * 2**20 if device.memory_mb is not None else None
            ),
            load_workers=1 if load is not None and load.cpu_percent > 0 else 0,
            load_percent=load.cpu_percent if load is not None else 0,
        ),
        start=start_script(
            prefix=prefix,
            device=device.name,
            run_dir=run_dir,
            python=python,
            sudo=sudo,
        ),
        teardown=teardown_script(
            prefix=prefix, device=device.name, run_dir=run_dir, sudo=sudo
        ),
    )


def _ifb_name(prefix: str, device: str) -> str:
    # Interface names are at most 15 bytes.
    return "ifb" + hashlib.sha256(f"{prefix}/{device}".encode()).hexdigest()[:12]


def route_address(host: str, port: int = 22) -> str:
    """The address this machine uses on its route to ``host``.

    Found by connecting a UDP socket, which sends nothing.
    """
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as error:
        raise TestbedError(f"cannot resolve board host {host!r}: {error}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(infos[0][4])
        except OSError as error:
            raise TestbedError(f"no route to board host {host!r}: {error}") from None
        address = str(probe.getsockname()[0])
    logger.debug("route to board %s leaves from %s", host, address)
    return address


def _replies(text: str, allowed: dict[str, tuple[str, ...] | None]) -> dict[str, str]:
    """``key=value`` lines a board printed, each checked against ``allowed``.

    A key whose allowed values are ``None`` takes a whole number.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key not in allowed:
            continue
        values = allowed[key]
        if values is None:
            if not value.isdigit():
                continue
        elif value not in values:
            continue
        found[key] = value
    return found


def _interface(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "interface" and value.replace("-", "").replace(".", "").isalnum():
            return value
    return None


# --- one board ---------------------------------------------------------------


def _expanded(path: Path, *, device: str, field_name: str) -> Path:
    expanded = path.expanduser()
    if not expanded.is_file():
        raise ConfigError(
            f"device {device}: ssh.{field_name} {path} does not exist or is not a file"
        )
    return expanded


@dataclass(slots=True)
class _Board:
    """One connected board during a run (mutated only on the event loop)."""

    device: DeviceConfig
    connection: asyncssh.SSHClientConnection
    sudo: str = ""
    checked: bool = False
    # The run directory as a shell word, known before the board has made it.
    run_target: str | None = None
    run_dir: str | None = None
    scripts: BoardScripts | None = None
    process: asyncssh.SSHClientProcess[str] | None = None
    pid: int | None = None
    exit_status: int | None = None
    clock_offset_s: float | None = None
    log: list[str] = field(default_factory=list)
    drains: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def ssh(self) -> SshConfig:
        assert self.device.ssh is not None
        return self.device.ssh

    async def run(self, command: str, *, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        """Run ``command`` on the board; a non-zero exit is a TestbedError."""
        logger.debug("%s$ %s", self.name, command)
        try:
            result = await self.connection.run(command, check=False, timeout=timeout_s)
        except (asyncssh.Error, OSError, TimeoutError) as error:
            raise TestbedError(
                f"device {self.name}: {command.split(maxsplit=1)[0]!r} on board "
                f"{self.ssh.host} failed: {error}"
            ) from None
        stdout = _text(result.stdout)
        if result.exit_status != 0:
            raise TestbedError(
                f"device {self.name}: command on board {self.ssh.host} exited "
                f"with {result.exit_status}: {command[:80]!r}: "
                f"{_text(result.stderr).strip()[-300:]}"
            )
        return stdout


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""


async def connect_board(device: DeviceConfig) -> asyncssh.SSHClientConnection:
    """Open an SSH connection to a device's board: key auth, host key checked.

    Raises
    ------
    ConfigError
        If the key or known_hosts file is missing.
    TestbedError
        If the board is unreachable, its host key is unknown or wrong, or it
        refuses the key; the message names the device and the host.
    """
    ssh = device.ssh
    if ssh is None:
        raise ConfigError(f"device {device.name} has no ssh section")
    key = _expanded(ssh.key, device=device.name, field_name="key")
    known_hosts: str | None = None
    if ssh.host_key_check:
        known_hosts = str(
            _expanded(ssh.known_hosts, device=device.name, field_name="known_hosts")
        )
    else:
        logger.warning(
            "device %s: the host key of board %s is NOT checked "
            "(host_key_check: false)",
            device.name,
            ssh.host,
        )
    where = f"{ssh.user}@{ssh.host}:{ssh.port}"
    logger.debug("device %s: connecting to %s with key %s", device.name, where, key)
    try:
        return await asyncssh.connect(
            ssh.host,
            port=ssh.port,
            username=ssh.user,
            client_keys=[str(key)],
            known_hosts=known_hosts,
            connect_timeout=CONNECT_TIMEOUT_S,
            agent_path=None,
            config=None,
        )
    except asyncssh.HostKeyNotVerifiable as error:
        raise TestbedError(
            f"device {device.name}: host key of board {ssh.host} (port {ssh.port}) "
            f"is not the one in {ssh.known_hosts}: {error.reason}; refusing to connect"
        ) from None
    except asyncssh.PermissionDenied:
        raise TestbedError(
            f"device {device.name}: board {where} refused the key {ssh.key}"
        ) from None
    except asyncssh.KeyImportError as error:
        raise ConfigError(
            f"device {device.name}: ssh.key {ssh.key} is not a usable private "
            f"key: {error}"
        ) from None
    except (asyncssh.Error, OSError, TimeoutError) as error:
        raise TestbedError(
            f"device {device.name}: cannot reach board {where}: {error}"
        ) from None


def package_files() -> list[tuple[Path, str]]:
    """splitlab's own source files, as (local file, path under the run dir)."""
    root = Path(splitlab.__file__).parent
    files = []
    for path in sorted(root.rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and path.suffix in {".py", ".yaml", ".typed"}
        ):
            files.append((path, path.relative_to(root.parent).as_posix()))
    return files


# --- the testbed ---------------------------------------------------------------


class _LocalStation(LocalTestbed):
    """The base station's process on this machine, listening where the boards
    reach it rather than on loopback."""

    address = "127.0.0.1"

    @property
    def station_host(self) -> str:
        """The address the boards reach the base station at."""
        return self.address


class SshTestbed:
    """Runs a scenario's devices on real boards; the base station stays here.

    Parameters
    ----------
    scenario:
        A scenario with backend ``ssh`` (every device has an ``ssh`` section).
    prefix:
        A name unique to the run: the run directory on each board and the
        tag of every process started there.
    save_to:
        A folder where each board's scripts and agent log are written, or
        ``None``.
    weights:
        The trained weights to upload; :meth:`start_station` sets them from
        the station's configuration.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        prefix: str,
        save_to: Path | None = None,
        weights: Path | None = None,
    ) -> None:
        for device in scenario.devices:
            if device.ssh is None:
                raise ConfigError(f"device {device.name} has no ssh section")
        self.scenario = scenario
        self.prefix = prefix
        self.save_to = save_to
        self._station = _LocalStation(scenario, prefix=prefix, prefer="sigstop")
        self._weights = weights
        self._boards: dict[str, _Board] = {}
        self._processes: dict[str, BoardProcess] = {}
        self._address: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"ssh-{prefix}", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._prepared = False
        self._work: set[asyncio.Task[Any]] = set()

    # The station and its address.

    @property
    def address(self) -> str:
        """The address the base station listens on and the boards connect to."""
        if self._address is None:
            configured = self.scenario.base_station.address
            if configured is not None:
                self._address = str(configured)
            else:
                first = self.scenario.devices[0].ssh
                assert first is not None
                self._address = route_address(first.host, first.port)
        return self._address

    @property
    def station(self) -> Popen[str] | None:
        """The base station's process on this machine."""
        return self._station.station

    @property
    def mechanism(self) -> str:
        """The limit mechanisms the boards used (comma-separated when they differ)."""
        used = sorted({p.limit.mechanism for p in self._processes.values()})
        return ",".join(used) or "none"

    def start_station(self, config: StationConfig) -> Iterator[dict[str, Any]]:
        """Prepare the boards, then start the base station on this machine.

        The boards get their files first, so that the station's wait for its
        devices does not include the uploads.  The station listens on
        :attr:`address`.
        """
        self._weights = config.weights
        self.prepare()
        host = self.address
        logger.info("the base station listens on %s for the boards", host)
        self._station.address = host
        return self._station.start_station(replace(config, host=host))

    def station_exit_code(self) -> int | None:
        """Wait for the station to exit and return its exit code."""
        return self._station.station_exit_code()

    # The boards.

    def connect(self) -> None:
        """Connect to every board (once); errors name the device and host."""
        self._call(self._connect_all(), timeout_s=CONNECT_TIMEOUT_S * 2 + 10)

    def prepare(self) -> None:
        """Connect to every board and upload what its agent needs (once)."""
        if self._prepared:
            return
        self.connect()
        with tempfile.TemporaryDirectory(prefix="splitlab-boards-") as folder:
            uploads = self._prepare_files(Path(folder))
            size = sum(path.stat().st_size for path in uploads.values())
            size += sum(path.stat().st_size for path, _ in package_files())
            logger.info(
                "uploading %d bytes to each of %d boards", size, len(self._boards)
            )
            self._call(self._upload_all(uploads), timeout_s=UPLOAD_TIMEOUT_S)
        self._prepared = True

    def start_devices(self, *, port: int, secret: bytes) -> list[BoardProcess]:
        """Set up every board's link and limit and start its agent."""
        self.prepare()
        self._call(
            self._start_all(port=port, secret=secret),
            timeout_s=START_TIMEOUT_S + COMMAND_TIMEOUT_S,
        )
        return [self._processes[d.name] for d in self.scenario.devices]

    def kill_device(self, name: str) -> None:
        """Kill one board's agent at once (fault injection)."""
        board, pid = self._running(name)
        self._call(board.run(f"kill -KILL {pid}"), timeout_s=COMMAND_TIMEOUT_S)

    def cut_link(self, name: str) -> None:
        """Make one board's agent drop its connection; it reconnects."""
        board, pid = self._running(name)
        self._call(board.run(f"kill -USR1 {pid}"), timeout_s=COMMAND_TIMEOUT_S)

    def set_cpu_share(self, name: str, share: float) -> BoardLimit:
        """Hold one running board's agent to a new CPU share (a load change)."""
        board, pid = self._running(name)
        if not 0.01 <= share <= 64:
            raise ConfigError(f"cpu_share {share!r} is out of range 0.01..64")
        limit = self._call(
            self._reshare(board, pid, share), timeout_s=COMMAND_TIMEOUT_S
        )
        process = self._processes[name]
        self._processes[name] = BoardProcess(
            process.config, process.pid, limit, process.shaping, process.clock_offset_s
        )
        return limit

    def agent_exit_codes(self) -> dict[str, int | None]:
        """Each started agent's exit status (``None`` while running or unknown)."""
        return {name: board.exit_status for name, board in self._boards.items()}

    def close(self) -> None:
        """Stop every agent, undo every board's setup, delete the run directories."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._close_all(), timeout_s=STOP_TIMEOUT_S * 4 + 30)
        except (TestbedError, TimeoutError) as error:
            logger.error("cleaning up the boards failed: %s", error)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._station.close()

    # Helpers on this thread.

    def _call(self, coroutine: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self._loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise TestbedError(
                f"the boards did not answer within {timeout_s:.0f} s"
            ) from None
        except BaseException:
            future.cancel()
            raise

    def _running(self, name: str) -> tuple[_Board, int]:
        board = self._boards.get(name)
        if board is None or board.pid is None:
            raise TestbedError(f"no device {name!r} running in this testbed")
        return board, board.pid

    def _prepare_files(self, folder: Path) -> dict[str, Path]:
        """The files every board gets, by their name in the run directory."""
        scenario = self.scenario
        if self._weights is None:
            raise TestbedError("start the base station before the devices")
        weights = folder / "weights.npz"
        write_npz_weights(self._weights, weights)
        data = folder / "data.npz"
        write_npz(
            load_held_out(
                scenario.data.dataset,
                data_dir=scenario.data.dir,
                test_fraction=scenario.training.test_fraction,
                seed=scenario.seed,
            ),
            data,
        )
        files = {"weights.npz": weights, "data.npz": data}
        if scenario.model not in MODELS and is_reference(scenario.model):
            source = Path(scenario.model.rpartition(":")[0])
            files[f"model/{source.name}"] = source
        return files

    # Coroutines on the event loop.

    async def _connect_all(self) -> None:
        missing = [d for d in self.scenario.devices if d.name not in self._boards]
        results = await asyncio.gather(
            *(connect_board(d) for d in missing), return_exceptions=True
        )
        for device, result in zip(missing, results, strict=True):
            if isinstance(result, BaseException):
                continue
            board = _Board(device, result)
            self._boards[device.name] = board
        for result in results:
            if isinstance(result, BaseException):
                raise result
        await asyncio.gather(
            *(self._check_board(b) for b in self._boards.values() if not b.checked)
        )

    async def _check_board(self, board: _Board) -> None:
        await self._check_python(board)
        await self._check_root(board)
        await self._measure_clock(board)
        board.checked = True

    async def _measure_clock(self, board: _Board) -> None:
        # One shell answers each newline with its time, so a probe's round
        # trip is only the channel's; the quickest of a few tries counts.
        command = "while read -r _; do date +%s.%N; done"
        logger.debug("%s$ %s", board.name, command)
        best: tuple[float, float] | None = None
        try:
            process = await board.connection.create_process(command)
        except (asyncssh.Error, OSError) as error:
            logger.warning("device %s: clock not measured: %s", board.name, error)
            return
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                for _ in range(CLOCK_PROBES):
                    sent_s = time.time()
                    process.stdin.write("\n")
                    line = await process.stdout.readline()
                    received_s = time.time()
                    try:
                        board_s = float(line.strip())
                    except ValueError:
                        return
                    round_trip_s = received_s - sent_s
                    if best is None or round_trip_s < best[0]:
                        best = (round_trip_s, board_s - (sent_s + received_s) / 2)
        except TimeoutError:
            logger.warning("device %s: clock not measured in time", board.name)
            return
        finally:
            process.stdin.write_eof()
            process.close()
        assert best is not None
        uncertainty_s, offset_s = best[0] / 2, best[1]
        board.clock_offset_s = offset_s
        log = (
            logger.warning
            if abs(offset_s) > CLOCK_WARN_S + uncertainty_s
            else logger.info
        )
        log(
            "device %s: board clock is %+.1f ms off this machine's (+- %.1f ms); "
            "measured transmission times carry this error",
            board.name,
            offset_s * 1e3,
            uncertainty_s * 1e3,
        )

    async def _check_python(self, board: _Board) -> None:
        python = board.ssh.python
        probe = f"{shlex.quote(python)} -c {shlex.quote(PYTHON_PROBE)} 2>&1"
        try:
            reply = await board.run(probe, timeout_s=COMMAND_TIMEOUT_S * 2)
        except TestbedError as error:
            raise TestbedError(
                f"device {board.name}: {python} on board {board.ssh.host} cannot "
                f"import numpy and torch (see docs/boards.md): {error}"
            ) from None
        version = _replies(reply, {"python": None}).get("python")
        if version is None or int(version) < MIN_PYTHON:
            raise TestbedError(
                f"device {board.name}: {python} on board {board.ssh.host} is not "
                f"Python 3.11 or newer (said {reply.strip()[-80:]!r})"
            )

    async def _check_root(self, board: _Board) -> None:
        # tc and cgroups need root: as root, or with sudo that needs no
        # password, else the board is neither limited nor kernel-shaped.
        uid = (await board.run("id -u")).strip()
        if uid == "0":
            return
        try:
            await board.run("sudo -n true")
            board.sudo = "sudo -n "
        except TestbedError:
            logger.warning(
                "device %s: user %s on board %s is not root and has no "
                "password-less sudo; no limit or kernel shaping",
                board.name,
                board.ssh.user,
                board.ssh.host,
            )

    async def _upload_all(self, uploads: dict[str, Path]) -> None:
        await asyncio.gather(
            *(self._make_run_dir(board, uploads) for board in self._boards.values())
        )

    async def _make_run_dir(self, board: _Board, uploads: dict[str, Path]) -> None:
        # The run directory, under a workdir that may start with ~.
        workdir = board.ssh.workdir
        if workdir == "~" or workdir.startswith("~/"):
            base = '"$HOME"/' + shlex.quote(workdir[2:] or ".")
        else:
            base = shlex.quote(workdir)
        target = f"{base}/{shlex.quote(self.prefix)}"
        board.run_target = target
        reply = await board.run(
            f"umask 077 && mkdir -p -- {target} && cd -- {target} && pwd -P"
        )
        run_dir = reply.strip()
        if not run_dir.startswith("/") or "\n" in run_dir:
            raise TestbedError(
                f"device {board.name}: board gave run directory {run_dir!r}"
            )
        board.run_dir = run_dir
        await self._upload(board, uploads)

    async def _start_all(self, *, port: int, secret: bytes) -> None:
        await asyncio.gather(
            *(
                self._start(board, port=port, secret=secret)
                for board in self._boards.values()
            )
        )

    async def _start(self, board: _Board, *, port: int, secret: bytes) -> None:
        ssh = board.ssh
        name = board.name
        run_dir = board.run_dir
        assert run_dir is not None
        scripts = board_scripts(
            board.device,
            prefix=self.prefix,
            run_dir=run_dir,
            station=self.address,
            port=port,
            python=ssh.python,
            sudo=board.sudo,
        )
        await self._write_scripts(board, scripts.named(name))
        board.scripts = scripts

        # The link, then the agent under its limit.
        shaping_reply = await board.run(
            f"{board.sudo}bash {shlex.quote(run_dir)}/link-{name}.sh up"
        )
        found = _replies(shaping_reply, {"rate": RATE_SHAPERS, "delay": DELAY_SHAPERS})
        shaping = LinkShaping(
            interface=_interface(shaping_reply),
            rate=found.get("rate", "transport"),
            delay=found.get("delay", "transport"),
        )
        logger.info(
            "device %s: link rate by %s, delay by %s (interface %s)",
            name,
            shaping.rate,
            shaping.delay,
            shaping.interface,
        )
        model = None
        if self.scenario.model not in MODELS and is_reference(self.scenario.model):
            source, _, factory = self.scenario.model.rpartition(":")
            model = f"{run_dir}/model/{Path(source).name}:{factory}"
        config = {
            "host": self.address,
            "port": port,
            "node": name,
            "secret": secret.hex(),
            "threads": 1,
            "model": model,
            "weights": f"{run_dir}/weights.npz",
            "data": f"{run_dir}/data.npz",
            "transport": shaping.transport,
        }
        limit, pid = await self._start_agent(board, json.dumps(config))
        self._processes[name] = BoardProcess(
            board.device, pid, limit, shaping, board.clock_offset_s
        )
        self._save(
            name,
            {
                "board.json": json.dumps(
                    {
                        "host": ssh.host,
                        "run_dir": run_dir,
                        "pid": pid,
                        "limit_mechanism": limit.mechanism,
                        "cpu_share": limit.cpu_share,
                        "memory_bytes": limit.memory_bytes,
                        "interface": shaping.interface,
                        "rate": shaping.rate,
                        "delay": shaping.delay,
                        "clock_offset_s": board.clock_offset_s,
                    },
                    indent=2,
                )
                + "\n"
            },
        )

    async def _upload(self, board: _Board, files: dict[str, Path]) -> None:
        assert board.run_dir is not None
        run_dir = board.run_dir
        package = package_files()
        logger.debug(
            "device %s: uploading %d package files and %s to %s",
            board.name,
            len(package),
            ", ".join(files),
            run_dir,
        )
        try:
            async with board.connection.start_sftp_client() as sftp:
                folders = {str(Path(r).parent) for _, r in package} | {
                    str(Path(r).parent) for r in files
                }
                for folder in sorted(folders):
                    if folder != ".":
                        await sftp.makedirs(f"{run_dir}/{folder}", exist_ok=True)
                for local, relative in package:
                    await sftp.put(str(local), f"{run_dir}/{relative}")
                for relative, local in files.items():
                    await sftp.put(str(local), f"{run_dir}/{relative}")
        except (asyncssh.Error, OSError) as error:
            raise TestbedError(
                f"device {board.name}: upload to board {board.ssh.host} failed: {error}"
            ) from None

    async def _write_scripts(self, board: _Board, scripts: dict[str, str]) -> None:
        """Write scripts to the board's run directory and to the run's folder."""
        assert board.run_dir is not None
        self._save(board.name, scripts)
        try:
            async with board.connection.start_sftp_client() as sftp:
                for file_name, text in scripts.items():
                    logger.debug("device %s: %s\n%s", board.name, file_name, text)
                    async with sftp.open(f"{board.run_dir}/{file_name}", "w") as handle:
                        await handle.write(text)
        except (asyncssh.Error, OSError) as error:
            raise TestbedError(
                f"device {board.name}: writing scripts to board {board.ssh.host} "
                f"failed: {error}"
            ) from None

    async def _start_agent(self, board: _Board, config: str) -> tuple[BoardLimit, int]:
        assert board.run_dir is not None and board.scripts is not None
        command = f"exec bash {shlex.quote(board.run_dir)}/start-{board.name}.sh"
        logger.debug("%s$ %s", board.name, command)
        process = await board.connection.create_process(command)
        board.process = process
        board.drains.append(asyncio.create_task(self._drain_log(board, process)))

        # The start script's lines until "ready"; then the agent runs.
        lines: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while True:
                    line = await process.stdout.readline()
                    if not line or line.strip() == "ready":
                        break
                    lines.append(line.strip())
        except TimeoutError:
            raise TestbedError(
                f"device {board.name}: the start script on board {board.ssh.host} "
                f"did not finish in {START_TIMEOUT_S:.0f} s"
            ) from None
        reply = "\n".join(lines)
        found = _replies(
            reply,
            {"pid": None, "mechanism": LIMIT_MECHANISMS, "memory_bytes": None},
        )
        if "pid" in found:
            board.pid = int(found["pid"])
        if not line:
            await asyncio.sleep(0.5)
            raise TestbedError(
                f"device {board.name}: the agent on board {board.ssh.host} did not "
                f"start: {' | '.join(board.log[-5:]) or 'no output'}"
            )
        process.stdin.write(config + "\n")
        process.stdin.write_eof()
        board.drains.append(asyncio.create_task(self._drain_stdout(board, process)))
        if board.pid is None:
            raise TestbedError(f"device {board.name}: the board did not say its pid")

        limit = _board_limit(
            found,
            board.device.cpu_share,
            tuple(
                line
                for text in board.scripts.named(board.name).values()
                for line in text.splitlines()
            ),
        )
        mechanism = limit.mechanism
        logger.info(
            "device %s: agent pid %d on board %s, limit %s",
            board.name,
            board.pid,
            board.ssh.host,
            mechanism,
        )
        return limit, board.pid

    async def _drain_log(
        self, board: _Board, process: asyncssh.SSHClientProcess[str]
    ) -> None:
        # Read continuously, so the agent never blocks on a full channel.
        while line := await process.stderr.readline():
            text = line.rstrip("\n")
            logger.debug("%s agent: %s", board.name, text)
            board.log.append(text)
            del board.log[:-LOG_LINES]

    async def _drain_stdout(
        self, board: _Board, process: asyncssh.SSHClientProcess[str]
    ) -> None:
        while line := await process.stdout.readline():
            board.log.append(line.rstrip("\n"))
            del board.log[:-LOG_LINES]
        status = await process.wait()
        board.exit_status = status.exit_status
        logger.info("device %s: agent exited with %s", board.name, board.exit_status)

    async def _reshare(self, board: _Board, pid: int, share: float) -> BoardLimit:
        assert board.run_dir is not None
        scripts = board_scripts(
            board.device,
            prefix=self.prefix,
            run_dir=board.run_dir,
            station=self.address,
            port=0,
            python=board.ssh.python,
            sudo=board.sudo,
            cpu_share=share,
        )
        file_name = f"limit-{board.name}.sh"
        await self._write_scripts(board, {file_name: scripts.limit})
        reply = await board.run(
            f"{board.sudo}bash {shlex.quote(board.run_dir)}/{file_name} apply {pid}"
        )
        found = _replies(reply, {"mechanism": LIMIT_MECHANISMS, "memory_bytes": None})
        return _board_limit(found, share, tuple(scripts.limit.splitlines()))

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        # Work still running when the testbed closes (after Ctrl-C or a
        # timeout) is cancelled and awaited before the cleanup starts.
        task = asyncio.current_task()
        assert task is not None
        self._work.add(task)
        try:
            return await coroutine
        finally:
            self._work.discard(task)

    async def _close_all(self) -> None:
        current = asyncio.current_task()
        unfinished = [task for task in self._work if task is not current]
        for task in unfinished:
            # A task already cancelled is left to finish its cleanup (an SFTP
            # session waiting for the board to close it).
            if not task.cancelling():
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*unfinished, return_exceptions=True)
        await asyncio.gather(
            *(self._close(board) for board in self._boards.values()),
            return_exceptions=True,
        )

    async def _close(self, board: _Board) -> None:
        try:
            if board.run_dir is not None and board.scripts is not None:
                run = shlex.quote(board.run_dir)
                with contextlib.suppress(TestbedError):
                    await board.run(
                        f"{board.sudo}bash {run}/teardown-{board.name}.sh",
                        timeout_s=STOP_TIMEOUT_S * 2,
                    )
            if board.process is not None:
                with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await asyncio.gather(*board.drains)
                board.process.close()
            # The directory as the board named it, else as it was asked for
            # (the board may have made it without the answer arriving).
            target = (
                shlex.quote(board.run_dir)
                if board.run_dir is not None
                else board.run_target
            )
            if target is not None:
                await board.run(f"rm -rf -- {target}")
                logger.debug("device %s: removed %s", board.name, target)
        except TestbedError as error:
            logger.error("%s", error)
        finally:
            for task in board.drains:
                task.cancel()
            self._save(board.name, {"agent.log": "\n".join(board.log) + "\n"})
            board.connection.close()
            with contextlib.suppress(Exception):
                await board.connection.wait_closed()

    def _save(self, device: str, files: dict[str, str]) -> None:
        if self.save_to is None:
            return
        folder = self.save_to / device
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            (folder / file_name).write_text(text)


def _board_limit(
    found: dict[str, str], share: float | None, commands: tuple[str, ...]
) -> BoardLimit:
    """The limit a board reported, with the share its mechanism can express."""
    mechanism = found.get("mechanism", "none")
    memory = found.get("memory_bytes")
    enforced: float | None = None
    if share is not None and mechanism == "cpulimit":
        enforced = round(share * 100) / 100
    elif share is not None and mechanism != "none":
        quota_us, period_us = cfs_quota(share)
        enforced = quota_us / period_us
    return BoardLimit(
        mechanism=mechanism,
        cpu_share=enforced,
        memory_bytes=int(memory) if memory is not None else None,
        commands=commands,
    )
