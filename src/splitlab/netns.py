"""The ``netns`` testbed: real Linux namespaces, ``tc`` and nftables.

Every node runs in a network namespace of its own, and the kernel shapes the
links between them (see :mod:`splitlab.network` for the topology and the
commands): rate by ``tc`` htb, loss by nftables, latency and jitter by
``tc netem`` where the kernel has it and by the userspace delay stage
(:mod:`splitlab.delay`) where it does not.  Devices are held to their CPU
share and memory by the same limiter as on the ``local`` testbed, pinned to
their CPUs, and loaded by ``stress-ng`` inside their own limit.

The network is built by a bash script generated before anything runs; the
script, its teardown and the delay stage's command line are logged at debug
level and saved in the run's folder, so they can be read and replayed by
hand.  Teardown always runs; what a killed run leaves behind is removed by
:func:`remove_networks` (``splitlab testbed down``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from splitlab.errors import TestbedError
from splitlab.limit import LimitSpec, Mechanism
from splitlab.measure import (
    Comparison,
    Effort,
    TestbedCheck,
    measure_cpu_share,
    measure_loss,
    measure_rate_bps,
    measure_rtt_s,
    rate_transfer_bytes,
)
from splitlab.monitor import PingRtt, RttProbe
from splitlab.network import (
    NetworkPlan,
    choose_octet,
    delay_command,
    interface_tag,
    namespace_prefix,
    nft_table_name,
    plan_network,
    setup_script,
    teardown_script,
)
from splitlab.scenario import Scenario
from splitlab.testbed import LocalTestbed, owner_alive, pin

logger = logging.getLogger(__name__)

SCRIPT_TIMEOUT_S = 120.0
DELAY_READY_TIMEOUT_S = 30.0
_TEN_RE = re.compile(r"\b10\.(\d{1,3})\.\d{1,3}\.\d{1,3}")


class NetnsTestbed(LocalTestbed):
    """Builds one run's namespaces and links, runs its nodes in them.

    The network is built when the testbed is made and removed by
    :meth:`close`; a failure while building removes what was built.

    Parameters
    ----------
    scenario:
        The scenario whose nodes and links to realise.
    prefix:
        A name unique to the run; namespaces, interfaces, the nftables table
        and control groups are named after it.
    run_dir:
        Where the setup and teardown scripts are saved.
    prefer:
        Force a CPU limit mechanism instead of the best available.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        prefix: str,
        run_dir: Path,
        prefer: Mechanism | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise TestbedError(
                f"the netns backend needs root, but this process runs as uid "
                f"{os.geteuid()}"
            )
        super().__init__(scenario, prefix=prefix, prefer=prefer)
        self.run_dir = run_dir
        self.delay: subprocess.Popen[str] | None = None
        self._torn_down = False
        octet = choose_octet(prefix, used_octets())
        self.plan: NetworkPlan = plan_network(
            [(device.name, device.link) for device in scenario.devices],
            station=scenario.base_station.name,
            prefix=prefix,
            octet=octet,
            netem=netem_available(prefix),
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        self.setup_path = run_dir / "setup.sh"
        self.teardown_path = run_dir / "teardown.sh"
        self.delay_path = run_dir / "delay.sh"
        self._write(self.teardown_path, teardown_script(self.plan))
        self._write(self.setup_path, setup_script(self.plan))
        try:
            run_script(self.setup_path)
            if self.plan.delayed:
                self._start_delay_stage()
        except BaseException:
            self._teardown()
            raise

    @property
    def station_host(self) -> str:
        """The base station's address in its namespace."""
        return self.plan.station.address

    @property
    def scripts(self) -> tuple[Path, ...]:
        """The saved scripts: setup, teardown, and the delay stage's command."""
        return tuple(
            path
            for path in (self.setup_path, self.teardown_path, self.delay_path)
            if path.exists()
        )

    def rtt_probe(self, node: str, port: int) -> RttProbe:
        """ICMP echo from ``node``'s namespace to the base station, over the
        shaped link."""
        namespace = self.plan.device(node).namespace
        return PingRtt(self.station_host, ("ip", "netns", "exec", namespace))

    def node_command(self, node: str, command: list[str]) -> list[str]:
        """``command`` run inside ``node``'s network namespace.

        ``nsenter`` enters the namespace and execs the command, so the
        process keeps its pid, its parent (and parent-death signal) and its
        limits.  Unlike ``ip netns exec`` it leaves the mount namespace
        alone, so a device still sees its own cgroup and reports its limit.
        """
        if node == self.plan.station.node:
            namespace = self.plan.station.namespace
        else:
            namespace = self.plan.device(node).namespace
        return enter_command(namespace, command)

    def check(self, effort: Effort) -> TestbedCheck:
        """Measure every link and every device's CPU share.

        Must be called before the devices start (each device's busy loop is
        held under the device's name).
        """
        comparisons: list[Comparison] = []
        station = self.plan.station
        for node in self.plan.devices:
            link = node.link
            assert link is not None
            name = node.node
            rtt_s = measure_rtt_s(node.namespace, station.address, count=effort.pings)
            comparisons.append(
                Comparison(name, "latency_ms", link.latency_ms, rtt_s / 2 * 1e3)
            )
            rate_bps = link.rate_mbps * 1e6
            size = rate_transfer_bytes(rate_bps, effort)
            timeout_s = 10 * size * 8 / rate_bps + 4 * rtt_s + 10
            for quantity, (sender, receiver, address) in (
                ("uplink_mbps", (node.namespace, station.namespace, station.address)),
                ("downlink_mbps", (station.namespace, node.namespace, node.address)),
            ):
                measured = measure_rate_bps(
                    sender, receiver, address, size_bytes=size, timeout_s=timeout_s
                )
                comparisons.append(
                    Comparison(name, quantity, link.rate_mbps, measured / 1e6)
                )
            if link.loss_percent > 0:
                for quantity, (sender, receiver, address) in (
                    ("uplink_loss_percent",
                     (node.namespace, station.namespace, station.address)),
                    ("downlink_loss_percent",
                     (station.namespace, node.namespace, node.address)),
                ):  # fmt: skip
                    lost = measure_loss(
                        sender,
                        receiver,
                        address,
                        probes=effort.probes,
                        rate_bps=rate_bps,
                        latency_s=rtt_s / 2,
                    )
                    comparisons.append(
                        Comparison(name, quantity, link.loss_percent, lost * 100)
                    )
        for config in self.scenario.devices:
            comparisons.append(
                Comparison(
                    config.name,
                    "cpu_share",
                    config.share,
                    self.measure_cpu(config.name, busy_s=effort.busy_s),
                )
            )
        return TestbedCheck(tuple(comparisons))

    def measure_cpu(self, device: str, *, busy_s: float, loaded: bool = False) -> float:
        """The CPU share a busy loop gets in ``device``'s namespace and limit.

        With ``loaded``, the device's background load runs in the same limit
        meanwhile, competing for the share as it does during a run.
        """
        index, config = next(
            (i, d) for i, d in enumerate(self.scenario.devices) if d.name == device
        )
        load: list[subprocess.Popen[bytes]] = []

        def release(pid: int) -> None:
            for process in load:
                process.terminate()
                process.wait()
            self.limiter.release(pid)

        def limit(pid: int) -> Callable[[], None]:
            applied = self.limiter.apply(
                pid,
                LimitSpec(cpu_share=config.share, memory_bytes=config.memory_bytes),
                name=f"{device}.check",
            )
            if config.cpus is not None:
                pin(pid, config.cpus, field=f"devices[{index}].cpus")
            if loaded and config.load is not None:
                process = self.start_load(index, config, applied)
                if process is not None:
                    load.append(process)
            return partial(release, pid)

        return measure_cpu_share(
            enter_command(self.plan.device(device).namespace, []),
            busy_s=busy_s,
            limit=limit,
            environment=self._environment(),
        )

    def close(self) -> None:
        """Stop every process, remove every limit, then remove the network."""
        try:
            super().close()
        finally:
            self._teardown()

    def _start_delay_stage(self) -> None:
        command = delay_command(
            self.plan, python=sys.executable, seed=self.scenario.seed
        )
        self._write(self.delay_path, f"{shlex.join(command)} &\n")
        logger.debug("starting the delay stage: %s", shlex.join(command))
        self.delay = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=self._environment(),
        )
        assert self.delay.stdout is not None
        line = self.delay.stdout.readline().strip()
        if line != "ready":
            code = self.delay.wait(timeout=DELAY_READY_TIMEOUT_S)
            raise TestbedError(
                f"the delay stage did not start (exit code {code}, said {line!r})"
            )

    def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        if self.delay is not None and self.delay.poll() is None:
            self.delay.terminate()
            try:
                self.delay.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.delay.kill()
                self.delay.wait()
        run_script(self.teardown_path, check=False)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)
        logger.debug("%s:\n%s", path, text)


def enter_command(namespace: str, command: list[str]) -> list[str]:
    """``command`` run in network namespace ``namespace`` by ``nsenter``."""
    return ["nsenter", f"--net=/run/netns/{namespace}", "--", *command]


def run_script(path: Path, *, check: bool = True) -> None:
    """Run a generated bash script; a failure names the command that failed.

    Raises
    ------
    TestbedError
        If ``check`` and the script failed or ran too long.
    """
    logger.debug("bash -x %s", path)
    try:
        done = subprocess.run(
            ["bash", "-x", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        if check:
            raise TestbedError(
                f"{path} ran longer than {SCRIPT_TIMEOUT_S:.0f} s"
            ) from None
        return
    if done.returncode != 0 and check:
        traced = [line for line in done.stderr.splitlines() if line.startswith("+")]
        last = traced[-1].lstrip("+ ") if traced else "?"
        message = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        raise TestbedError(f"{path} failed at `{last}`: {message}")


def netem_available(prefix: str) -> bool:
    """Whether this kernel has the netem qdisc, tried in a scratch namespace."""
    scratch = f"{namespace_prefix(prefix)}probe"
    commands = [
        ["ip", "netns", "add", scratch],
        ["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem",
         "delay", "1ms"],
    ]  # fmt: skip
    try:
        for command in commands:
            logger.debug("%s", shlex.join(command))
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=30, check=False
            )
            if done.returncode != 0:
                if command[0] == "ip":
                    raise TestbedError(
                        f"cannot make a network namespace: {done.stderr.strip()}"
                    )
                logger.debug("no netem: %s", done.stderr.strip())
                return False
        return True
    finally:
        logger.debug("ip netns del %s", scratch)
        subprocess.run(
            ["ip", "netns", "del", scratch], capture_output=True, check=False
        )


def used_octets() -> set[int]:
    """Second octets of the ``10.x`` addresses and routes in use on this machine.

    Looks at the addresses and routes of the root namespace and the
    addresses of every named namespace.
    """
    texts = [
        _output(["ip", "-o", "-4", "addr", "show"]),
        _output(["ip", "-4", "route", "show", "table", "all"]),
    ]
    for namespace in _namespaces():
        texts.append(_output(["ip", "-n", namespace, "-o", "-4", "addr", "show"]))
    return {int(octet) for text in texts for octet in _TEN_RE.findall(text)}


def remove_networks(prefix: str | None = None) -> list[str]:
    """Remove what netns runs (of ``prefix``, or all of them) left behind.

    Kills the processes still in their namespaces, deletes the namespaces
    (with their interfaces, qdiscs, IFB and TUN devices and nftables
    tables), and any nftables table or interface of theirs in the root
    namespace.  Returns one line per thing removed.
    """
    start = namespace_prefix(prefix) if prefix else "splitlab-"
    removed: list[str] = []
    prefixes: set[str] = {prefix} if prefix else set()
    for namespace in _namespaces():
        if not namespace.startswith(start):
            continue
        owner = namespace.removeprefix("splitlab-").split("-", 1)[0]
        # A sweep of every run spares the runs still going.
        if prefix is None and owner_alive(owner):
            continue
        prefixes.add(owner)
        pids = _output(["ip", "netns", "pids", namespace]).split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
                removed.append(f"killed pid {pid} in {namespace}")
        _run(["ip", "netns", "del", namespace])
        removed.append(f"removed namespace {namespace}")
    tables = _output(["nft", "list", "tables"]).splitlines()
    names = {nft_table_name(each) for each in prefixes}
    for line in tables:
        words = line.split()
        if len(words) == 3 and words[2] in names:
            _run(["nft", "delete", "table", words[1], words[2]])
            removed.append(f"removed nftables table {words[1]} {words[2]}")
    tags = tuple(interface_tag(each) for each in prefixes)
    for line in _output(["ip", "-o", "link", "show"]).splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if tags and name.startswith(tags):
            _run(["ip", "link", "del", name])
            removed.append(f"removed interface {name}")
    return removed


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _output(["ip", "netns", "list"]).splitlines()
            if line.strip()]  # fmt: skip


def _output(command: list[str]) -> str:
    logger.debug("%s", shlex.join(command))
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


def _run(command: list[str]) -> None:
    logger.debug("%s", shlex.join(command))
    subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
