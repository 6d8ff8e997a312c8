"""The netns testbed's network, planned and written out as bash scripts.

This module is pure: from the scenario's devices, the run prefix and the
subnet the run chose, :func:`plan_network` derives every name and address,
and :func:`setup_script` and :func:`teardown_script` write the commands that
build and remove the network.  :mod:`splitlab.netns` runs the scripts and
saves them with the run, so they can be read and replayed by hand.

The topology is a star.  Every node (the base station and each device) has a
network namespace of its own, joined by a veth pair to a hub namespace that
routes between them::

    device ns ── veth ──┐
    device ns ── veth ──┼── hub ns (router) ── veth ── base station ns
    device ns ── veth ──┘

Node ``i`` (``0`` is the base station, ``1..n`` the devices) owns the /30
``10.<octet>.<4i div 256>.<4i mod 256>``: the hub side is ``.1``, the node
side ``.2``, and the node's default route goes through the hub.

Per device link, both directions are shaped where the packets leave:

rate
    ``tc`` htb on the device's veth (uplink) and on the hub's veth toward the
    device (downlink).  The configured rate is what a TCP stream gets, so the
    htb rate is raised by the Ethernet, IP and TCP headers of a full-size
    segment (:data:`FRAME_BYTES` over :data:`SEGMENT_PAYLOAD_BYTES`).
loss
    An nftables table in the hub, named after the run, drops the packets
    that arrive from the device and those that leave toward it, each with
    the link's probability (``numgen random``); packets marked with DSCP
    class :data:`EXEMPT_DSCP` (the check's rate transfers) pass.
latency and jitter
    ``tc netem`` under the htb class when the kernel has it.  Without netem,
    a userspace delay stage (:mod:`splitlab.delay`) in the hub holds each
    packet: policy routing sends what arrives from the device's veth, and
    what the base station sends to the device, into a TUN device of that
    link; the delay stage writes each packet back into the same TUN device
    once its latency (plus jitter) has passed, and a packet arriving from
    the TUN device is routed normally.  Reverse-path filtering is off in the
    hub, so packets re-entering from a TUN device are accepted.

A board has no hub in front of it: :func:`board_script` shapes a single
interface both ways on the board itself, the ingress side through an IFB
device.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from splitlab.errors import ConfigError
from splitlab.scenario import LinkConfig

FRAME_BYTES = 1514
"""Bytes ``tc`` counts for one full-size TCP segment on a veth: a 1500-byte
IP packet and the 14-byte Ethernet header."""

SEGMENT_PAYLOAD_BYTES = 1448
"""TCP payload of one full-size segment: 1500 less 20 (IP), 20 (TCP) and 12
(the timestamp option Linux sends)."""

MAX_INTERFACE_CHARS = 15
"""The longest interface name Linux accepts (``IFNAMSIZ`` less one)."""

FIRST_TABLE = 1000
"""Routing table of node ``i``'s delay stage: ``FIRST_TABLE + i``."""

EXEMPT_DSCP = "cs1"
"""The DSCP class the loss rules let through: the testbed check marks its
rate transfers with it, so they measure the link's rate rather than TCP's
reaction to loss.  splitlab's own traffic never carries it."""

# Loss is drawn as an integer below this, so loss_percent has 0.01 % steps.
_LOSS_SCALE = 10_000
_MAX_NODES = 16_384


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    """One node's namespace, veth pair and addresses.

    Attributes
    ----------
    node:
        The node's name in the scenario.
    index:
        ``0`` for the base station, ``1..n`` for the devices in order.
    namespace:
        The node's network namespace.
    interface:
        The node's end of its veth pair, inside ``namespace``.
    hub_interface:
        The hub's end of the veth pair, inside the hub namespace.
    address:
        The node's IPv4 address.
    hub_address:
        The hub's address on the node's /30, the node's gateway.
    link:
        The device's link to the base station; ``None`` for the station.
    tun:
        The TUN device of the link's userspace delay stage, or ``None`` when
        the link has no delay or netem delays it.
    """

    node: str
    index: int
    namespace: str
    interface: str
    hub_interface: str
    address: str
    hub_address: str
    link: LinkConfig | None
    tun: str | None

    @property
    def subnet(self) -> str:
        """The node's /30 in CIDR notation."""
        return str(ipaddress.ip_network(f"{self.address}/30", strict=False))

    @property
    def table(self) -> int:
        """The routing table that sends the link's packets into its TUN device."""
        return FIRST_TABLE + self.index


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """Every name and address of one run's network.

    Attributes
    ----------
    prefix:
        The run prefix every name is derived from.
    octet:
        The second octet of the run's ``10.<octet>.0.0/16``.
    hub:
        The hub namespace.
    station:
        The base station's node.
    devices:
        The devices' nodes, in scenario order.
    netem:
        Whether latency and jitter come from ``tc netem`` (else from the
        userspace delay stage).
    nft_table:
        The nftables table (family ``inet``, in the hub) that drops packets.
    """

    prefix: str
    octet: int
    hub: str
    station: NodeNetwork
    devices: tuple[NodeNetwork, ...]
    netem: bool
    nft_table: str

    @property
    def nodes(self) -> tuple[NodeNetwork, ...]:
        """The station, then the devices."""
        return (self.station, *self.devices)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the run, the hub last."""
        return (*(node.namespace for node in self.nodes), self.hub)

    @property
    def delayed(self) -> tuple[NodeNetwork, ...]:
        """The devices whose links go through the userspace delay stage."""
        return tuple(node for node in self.devices if node.tun is not None)

    @property
    def has_loss(self) -> bool:
        """Whether any link drops packets."""
        return any(_loss_threshold(node) > 0 for node in self.devices)

    def device(self, name: str) -> NodeNetwork:
        """The node of device ``name``.

        Raises
        ------
        ConfigError
            If there is no such device.
        """
        for node in self.devices:
            if node.node == name:
                return node
        raise ConfigError(f"no device {name!r} in the network of {self.prefix}")


def namespace_prefix(prefix: str) -> str:
    """The start of every namespace name of the run with ``prefix``."""
    return f"splitlab-{prefix}-"


def interface_tag(prefix: str) -> str:
    """The start of every interface name of the run with ``prefix``.

    Interface names are short (15 characters), so they carry six hex digits
    of a hash of the prefix rather than the prefix itself.
    """
    return "s" + hashlib.sha256(prefix.encode()).hexdigest()[:6]


def nft_table_name(prefix: str) -> str:
    """The nftables table of the run with ``prefix``."""
    return f"splitlab_{prefix}".replace(".", "_")


def htb_rate_bps(link: LinkConfig) -> int:
    """The htb rate, in bit/s, that gives a TCP stream ``link.rate_mbps``."""
    return round(link.rate_mbps * 1e6 * FRAME_BYTES / SEGMENT_PAYLOAD_BYTES)


def choose_octet(prefix: str, used: set[int]) -> int:
    """The second octet of a ``10.x.0.0/16`` no interface or route uses.

    The search starts at a place derived from ``prefix``, so concurrent runs
    rarely race for the same subnet, and skips ``10.0`` and ``10.255``.

    Raises
    ------
    ConfigError
        If every candidate is in use.
    """
    start = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % 254
    for step in range(254):
        octet = 1 + (start + step) % 254
        if octet not in used:
            return octet
    raise ConfigError("every 10.x.0.0/16 subnet (x from 1 to 254) is in use")


def plan_network(
    devices: Sequence[tuple[str, LinkConfig]],
    *,
    station: str,
    prefix: str,
    octet: int,
    netem: bool,
) -> NetworkPlan:
    """Name and address every namespace, interface and table of a run.

    Parameters
    ----------
    devices:
        Each device's name and link, in scenario order.
    station:
        The base station's name.
    prefix:
        The run prefix (letters, digits, ``_`` and ``.``).
    octet:
        The second octet of the run's ``10.<octet>.0.0/16``.
    netem:
        Whether the kernel has ``tc netem``.

    Raises
    ------
    ConfigError
        If the octet is out of range or there are too many devices.
    """
    if not 1 <= octet <= 254:
        raise ConfigError(f"subnet octet {octet} must lie between 1 and 254")
    if len(devices) + 1 > _MAX_NODES:
        raise ConfigError(
            f"{len(devices)} devices do not fit in one /16 (at most {_MAX_NODES - 1})"
        )
    tag = interface_tag(prefix)
    start = namespace_prefix(prefix)

    def node(index: int, name: str, link: LinkConfig | None) -> NodeNetwork:
        base = 4 * index
        net = f"10.{octet}.{base // 256}"
        delayed = (
            link is not None
            and not netem
            and (link.latency_ms > 0 or link.jitter_ms > 0)
        )
        made = NodeNetwork(
            node=name,
            index=index,
            namespace=f"{start}bs" if link is None else f"{start}dev-{name}",
            interface=f"{tag}n{index}",
            hub_interface=f"{tag}h{index}",
            address=f"{net}.{base % 256 + 2}",
            hub_address=f"{net}.{base % 256 + 1}",
            link=link,
            tun=f"{tag}t{index}" if delayed else None,
        )
        longest = max(made.interface, made.hub_interface, key=len)
        assert len(longest) <= MAX_INTERFACE_CHARS, longest
        return made

    return NetworkPlan(
        prefix=prefix,
        octet=octet,
        hub=f"{start}hub",
        station=node(0, station, None),
        devices=tuple(
            node(index, name, link)
            for index, (name, link) in enumerate(devices, start=1)
        ),
        netem=netem,
        nft_table=nft_table_name(prefix),
    )


def setup_script(plan: NetworkPlan) -> str:
    """The bash script that builds the run's network, from nothing.

    It stops at the first failing command (``set -eu``); the matching
    :func:`teardown_script` removes whatever it had built.
    """
    hub = plan.hub
    lines = [
        "#!/usr/bin/env bash",
        f"# splitlab netns testbed {plan.prefix}: build the network "
        f"(10.{plan.octet}.0.0/16).",
        "set -eu",
        "",
        "# The hub routes between the nodes; packets re-entering from a delay",
        "# stage's TUN device must not be taken for spoofed ones.",
        _q("ip", "netns", "add", hub),
        _q("ip", "-n", hub, "link", "set", "lo", "up"),
        _q("ip", "netns", "exec", hub, "sysctl", "-qw", "net.ipv4.ip_forward=1"),
        _q("ip", "netns", "exec", hub, "sysctl", "-qw",
           "net.ipv4.conf.all.rp_filter=0"),
        _q("ip", "netns", "exec", hub, "sysctl", "-qw",
           "net.ipv4.conf.default.rp_filter=0"),
    ]  # fmt: skip
    for node in plan.nodes:
        ns = node.namespace
        lines += [
            "",
            f"# {node.node}: its namespace and its veth pair to the hub.",
            _q("ip", "netns", "add", ns),
            _q("ip", "-n", ns, "link", "set", "lo", "up"),
            _q("ip", "-n", hub, "link", "add", node.hub_interface, "type", "veth",
               "peer", "name", node.interface, "netns", ns),
            _q("ip", "netns", "exec", hub, "sysctl", "-qw",
               f"net.ipv4.conf.{node.hub_interface}.rp_filter=0"),
            _q("ip", "-n", hub, "addr", "add", f"{node.hub_address}/30",
               "dev", node.hub_interface),
            _q("ip", "-n", hub, "link", "set", node.hub_interface, "up"),
            _q("ip", "-n", ns, "addr", "add", f"{node.address}/30",
               "dev", node.interface),
            _q("ip", "-n", ns, "link", "set", node.interface, "up"),
            _q("ip", "-n", ns, "route", "add", "default", "via", node.hub_address),
        ]  # fmt: skip
    for node in plan.devices:
        lines += _shaping(plan, node)
    if plan.has_loss:
        lines += _loss_rules(plan)
    return "\n".join(lines) + "\n"


def teardown_script(plan: NetworkPlan) -> str:
    """The bash script that removes the run's network and what runs in it.

    Every command may fail (what it removes may already be gone); the
    script goes on.  Removing a namespace removes its interfaces, their
    qdiscs, its TUN devices and its nftables tables.
    """
    lines = [
        "#!/usr/bin/env bash",
        f"# splitlab netns testbed {plan.prefix}: remove the network.",
        "",
    ]
    for ns in plan.namespaces:
        pids = f"$(ip netns pids {shlex.quote(ns)} 2>/dev/null)"
        lines += [
            f"kill -KILL {pids} 2>/dev/null || true",
            f"{_q('ip', 'netns', 'del', ns)} 2>/dev/null || true",
        ]
    return "\n".join(lines) + "\n"


def delay_command(plan: NetworkPlan, *, python: str, seed: int) -> list[str]:
    """The command that runs the userspace delay stage in the hub.

    ``python -m splitlab.delay`` takes one ``TUN=LATENCY_MS,JITTER_MS``
    argument per delayed link.
    """
    links = []
    for node in plan.delayed:
        assert node.link is not None and node.tun is not None
        links.append(f"{node.tun}={node.link.latency_ms:g},{node.link.jitter_ms:g}")
    return [
        "ip", "netns", "exec", plan.hub, python, "-m", "splitlab.delay",
        "--realtime", "--seed", str(seed), *links,
    ]  # fmt: skip


def board_script(interface: str, link: LinkConfig, *, prefix: str, netem: bool) -> str:
    """The bash script that shapes a board's own link, both ways, on the board.

    A board (or any host without a hub in front of it) can shape only its
    own interface: egress (uplink) with htb directly, ingress (downlink) by
    redirecting it to an IFB device and shaping that device's egress.  Loss
    is an nftables table on the board's input and output; latency and
    jitter come from netem when the kernel has it (without netem a board
    cannot delay its own packets, and the script says so).

    Raises
    ------
    ConfigError
        If the interface name is not a valid one.
    """
    if not 0 < len(interface) <= MAX_INTERFACE_CHARS or "/" in interface:
        raise ConfigError(f"interface name {interface!r} is not valid")
    ifb = f"{interface_tag(prefix)}i"
    rate = f"{htb_rate_bps(link)}bit"
    lines = [
        "#!/usr/bin/env bash",
        f"# splitlab {prefix}: shape {interface} as a {link.rate_mbps:g} Mbit/s, "
        f"{link.latency_ms:g} ms link, both ways.",
        "set -eu",
        "",
        "# Downlink: what arrives on the interface is shaped on an IFB device.",
        _q("ip", "link", "add", ifb, "type", "ifb"),
        _q("ip", "link", "set", ifb, "up"),
        _q("tc", "qdisc", "add", "dev", interface, "handle", "ffff:", "ingress"),
        _q("tc", "filter", "add", "dev", interface, "parent", "ffff:", "protocol",
           "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress",
           "redirect", "dev", ifb),
    ]  # fmt: skip
    delayed = link.latency_ms > 0 or link.jitter_ms > 0
    for dev in (interface, ifb):
        lines += [
            _q("tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
               "default", "1"),
            _q("tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
               "htb", "rate", rate, "ceil", rate),
        ]  # fmt: skip
        if netem and delayed:
            delay = ["delay", f"{link.latency_ms:g}ms"]
            if link.jitter_ms > 0:
                delay += [f"{link.jitter_ms:g}ms", "distribution", "normal"]
            lines.append(
                _q("tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle",
                   "10:", "netem", *delay, "limit", "100000")
            )  # fmt: skip
    if delayed and not netem:
        lines += ["", "# This kernel has no netem: the link's latency is not emulated."]
    threshold = round(link.loss_percent * _LOSS_SCALE / 100)
    if threshold > 0:
        table = nft_table_name(prefix)
        lines += [
            "",
            "# Loss, each way (DSCP CS1, the check's rate transfers, excepted).",
            "nft -f - <<'NFT'",
            f"table inet {table} {{",
            "  chain input {",
            "    type filter hook input priority 0; policy accept;",
            f'    iifname "{interface}" ip dscp != {EXEMPT_DSCP} numgen random '
            f"mod {_LOSS_SCALE} < {threshold} drop",
            "  }",
            "  chain output {",
            "    type filter hook output priority 0; policy accept;",
            f'    oifname "{interface}" ip dscp != {EXEMPT_DSCP} numgen random '
            f"mod {_LOSS_SCALE} < {threshold} drop",
            "  }",
            "}",
            "NFT",
        ]
    return "\n".join(lines) + "\n"


def board_teardown_script(interface: str, *, prefix: str) -> str:
    """The bash script that undoes :func:`board_script`; every step may fail."""
    ifb = f"{interface_tag(prefix)}i"
    steps = [
        _q("tc", "qdisc", "del", "dev", interface, "root"),
        _q("tc", "qdisc", "del", "dev", interface, "ingress"),
        _q("ip", "link", "del", ifb),
        _q("nft", "delete", "table", "inet", nft_table_name(prefix)),
    ]
    return (
        "#!/usr/bin/env bash\n"
        f"# splitlab {prefix}: remove the shaping of {interface}.\n"
        + "".join(f"{step} 2>/dev/null || true\n" for step in steps)
    )


def _shaping(plan: NetworkPlan, node: NodeNetwork) -> list[str]:
    """Rate and delay of one device's link, both directions."""
    link = node.link
    assert link is not None
    rate = f"{htb_rate_bps(link)}bit"
    lines = [
        "",
        f"# {node.node}: {link.rate_mbps:g} Mbit/s each way (htb at {rate} pays "
        "for the headers),",
        "# on the device's egress (uplink) and the hub's egress (downlink).",
    ]
    for ns, dev in ((node.namespace, node.interface), (plan.hub, node.hub_interface)):
        lines += [
            _q("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:",
               "htb", "default", "1"),
            _q("tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:",
               "classid", "1:1", "htb", "rate", rate, "ceil", rate),
        ]  # fmt: skip
        if plan.netem and (link.latency_ms > 0 or link.jitter_ms > 0):
            delay = ["delay", f"{link.latency_ms:g}ms"]
            if link.jitter_ms > 0:
                delay += [f"{link.jitter_ms:g}ms", "distribution", "normal"]
            lines.append(
                _q("tc", "-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1",
                   "handle", "10:", "netem", *delay, "limit", "100000")
            )  # fmt: skip
    if node.tun is None:
        return lines
    hub, tun, table = plan.hub, node.tun, str(node.table)
    lines += [
        f"# {node.node}: {link.latency_ms:g} ms (jitter {link.jitter_ms:g} ms) "
        f"each way in the userspace delay stage, through {tun}.",
        _q("ip", "-n", hub, "tuntap", "add", "dev", tun, "mode", "tun"),
        _q("ip", "netns", "exec", hub, "sysctl", "-qw",
           f"net.ipv4.conf.{tun}.rp_filter=0"),
        _q("ip", "-n", hub, "link", "set", tun, "up"),
        _q("ip", "-n", hub, "route", "add", "default", "dev", tun, "table", table),
        _q("ip", "-n", hub, "rule", "add", "pref", "100", "iif", tun,
           "lookup", "main"),
        _q("ip", "-n", hub, "rule", "add", "pref", "200", "iif",
           node.hub_interface, "lookup", table),
        _q("ip", "-n", hub, "rule", "add", "pref", "200", "iif",
           plan.station.hub_interface, "to", node.subnet, "lookup", table),
    ]  # fmt: skip
    return lines


def _loss_rules(plan: NetworkPlan) -> list[str]:
    """The nftables table that drops each lossy link's packets, both ways."""
    rules = []
    for node in plan.devices:
        threshold = _loss_threshold(node)
        if threshold == 0:
            continue
        for match in ("iifname", "oifname"):
            rules.append(
                f'    {match} "{node.hub_interface}" ip dscp != {EXEMPT_DSCP} '
                f"numgen random mod {_LOSS_SCALE} < {threshold} counter drop"
            )
    ruleset = "\n".join(
        [
            f"table inet {plan.nft_table} {{",
            "  chain forward {",
            "    type filter hook forward priority 0; policy accept;",
            *rules,
            "  }",
            "}",
        ]
    )
    return [
        "",
        "# Packet loss: each lossy link's packets from and to the device are",
        "# dropped with its probability, in the hub (DSCP CS1, the check's",
        "# rate transfers, excepted).",
        f"{_q('ip', 'netns', 'exec', plan.hub, 'nft', '-f', '-')} <<'NFT'",
        ruleset,
        "NFT",
    ]


def _loss_threshold(node: NodeNetwork) -> int:
    return 0 if node.link is None else round(node.link.loss_percent * _LOSS_SCALE / 100)


def _q(*words: str) -> str:
    return " ".join(shlex.quote(word) for word in words)
