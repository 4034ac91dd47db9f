"""A real network between a deployment's parties, with faults a test injects.

Each party gets a Linux network namespace of its own, joined to one bridge
(in a namespace of its own: the "network") by a veth pair; the test process
joins it too, so it can reach the services as the AI provider. Faults act
on a party's port of the bridge, so they hit every connection of that party
and nothing else:

- ``partition(name)`` / ``heal(name)``: the port goes down / up. Packets are
  dropped silently, as on a cut cable: no reset, the peers only time out;
- ``lose(name, fraction)``: nftables drops that fraction of the frames
  forwarded from and to the port, at random (``numgen random``);
- ``limit(name, kbit)``: a token bucket (``tc tbf``) caps the party's
  uplink: its large messages queue and arrive late.

This machine's kernel has no ``netem`` (CONFIG_NET_SCH_NETEM is off), so a
fixed added delay is made in userspace instead: a ``DelayRelay``
(``tessera.testing.latency``) that the test process runs at
``host_address``, its address on the bridge, holds every chunk between a
party and the service behind it for the delay. Everything needs root and
iproute2 (``ip``, ``tc``); loss needs nftables (``nft``). ``unavailable()``
says what is missing.
Namespaces are named after this process's pid, and ones left by a process
that died are removed when the next network opens.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from tessera.deploy.local import Placement

PREFIX = "tsn"  # every namespace and root-side link this module makes starts with it
_OURS = re.compile(rf"^{PREFIX}(\d+)-")


def unavailable() -> str | None:
    """Why a test network cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian: iproute2, nftables)"
    return None


def _run(*args: str, stdin: str | None = None) -> None:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _remove_stale() -> None:
    """Namespaces of test networks whose process is gone (killed before it cleaned up)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in listed.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        found = _OURS.match(name)
        if found and not os.path.exists(f"/proc/{found.group(1)}"):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.N.0/24 that no address of this machine's root namespace is in (another
    test network's, say), starting from one our pid picks."""
    shown = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False)
    taken = {ipaddress.IPv4Interface(w).network for w in re.findall(r"inet (\S+)", shown.stdout)}
    for step in range(250):
        subnet = ipaddress.IPv4Network(f"10.213.{(os.getpid() + step) % 250}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("no free 10.213.N.0/24 subnet for a test network")


@dataclass
class FaultNetwork:
    """A bridge with one namespace per party; ``place`` is ``Deployment.place``."""

    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (netns, port)

    def __post_init__(self) -> None:
        self._tag = f"{PREFIX}{os.getpid()}"
        self.bridge_ns = f"{self._tag}-net"
        self._addresses = iter(self.subnet.hosts())
        self._address_of: dict[str, str] = {}  # namespace -> its party's address
        # The test process's own address on the bridge: the parties reach it there (a
        # DelayRelay it runs, say).
        self.host_address = str(next(self._addresses))
        # Link names are made in the root namespace first: named after our pid, they
        # cannot collide with another test network's (15 characters at most).
        self._root_link = f"{self._tag}h"

    def __enter__(self) -> FaultNetwork:
        why = unavailable()
        if why is not None:
            raise RuntimeError(f"no test network: {why}")
        _remove_stale()
        _run("ip", "netns", "add", self.bridge_ns)
        self._in_bridge("ip", "link", "add", "br0", "type", "bridge")
        self._in_bridge("ip", "link", "set", "br0", "up")
        self._in_bridge("nft", "-f", "-", stdin=_FAULT_TABLE)
        # The test process's own port: it plays the AI provider and watches the job.
        port = f"{self._tag}b"
        _run("ip", "link", "add", self._root_link, "type", "veth", "peer", "name", port)
        _run("ip", "link", "set", port, "netns", self.bridge_ns)
        self._plug(port)
        prefix = self.subnet.prefixlen
        _run("ip", "addr", "add", f"{self.host_address}/{prefix}", "dev", self._root_link)
        _run("ip", "link", "set", self._root_link, "up")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace (their links go with them) and the root-side link."""
        for ns, _port in self.hosts.values():
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        self.hosts.clear()
        subprocess.run(["ip", "link", "delete", self._root_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", self.bridge_ns], capture_output=True, check=False)

    # -- parties -------------------------------------------------------------------------
    def place(self, name: str) -> Placement:
        """Where ``name`` runs: its own namespace, made on first use."""
        if name not in self.hosts:
            self._add_host(name)
        ns, _port = self.hosts[name]
        return Placement(prefix=("ip", "netns", "exec", ns), host=self._address_of[ns])

    def _add_host(self, name: str) -> None:
        index = len(self.hosts)
        ns, port = f"{self._tag}-{index}", f"{self._tag}p{index}"
        address = next(self._addresses)
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port)
        _run("ip", "link", "set", port, "netns", self.bridge_ns)
        self._plug(port)
        _run("ip", "-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        self.hosts[name] = (ns, port)
        self._address_of[ns] = str(address)

    def _plug(self, port: str) -> None:
        self._in_bridge("ip", "link", "set", port, "master", "br0")
        self._in_bridge("ip", "link", "set", port, "up")

    def _in_bridge(self, *args: str, stdin: str | None = None) -> None:
        _run("ip", "netns", "exec", self.bridge_ns, *args, stdin=stdin)

    def _port(self, name: str) -> str:
        if name not in self.hosts:
            raise KeyError(f"{name} has no place in this network")
        return self.hosts[name][1]

    # -- faults --------------------------------------------------------------------------
    def partition(self, name: str) -> None:
        """Cut ``name`` off: nothing reaches it or leaves it until ``heal``."""
        self._in_bridge("ip", "link", "set", self._port(name), "down")

    def heal(self, name: str) -> None:
        self._in_bridge("ip", "link", "set", self._port(name), "up")

    def lose(self, name: str, fraction: float) -> None:
        """Drop ``fraction`` of the frames to and from ``name``, at random."""
        if not 0 <= fraction < 1:
            raise ValueError(f"a loss fraction is in [0, 1), not {fraction}")
        port, per_mille = self._port(name), round(fraction * 1000)
        for match in ("iifname", "oifname"):
            rule = f'{match} "{port}" numgen random mod 1000 < {per_mille} drop'
            self._in_bridge("nft", "add", "rule", "bridge", "faults", "links", *rule.split())

    def limit(self, name: str, kbit: int) -> None:
        """Cap ``name``'s uplink at ``kbit`` kbit/s (a token bucket; 200 ms of queue)."""
        ns, _port = self.hosts[name]
        burst = max(kbit * 1000 // 8 // 100, 2000)  # 10 ms worth, at least a frame or so
        _run(
            "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
            "tbf", "rate", f"{kbit}kbit", "burst", str(burst), "latency", "200ms",
        )  # fmt: skip


# The bridge's filter: frames forwarded between ports; the fault rules go in its chain.
_FAULT_TABLE = """
table bridge faults {
  chain links { type filter hook forward priority 0; policy accept; }
}
"""
