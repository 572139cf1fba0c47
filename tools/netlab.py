#!/usr/bin/env python3
"""Multi-host network lab on one Linux machine, built from network namespaces.

Used by meshrpc's tests of LAN discovery (mDNS multicast) and failover.

Topology (every box is a network namespace; the machine's own root namespace
never gets an interface, so lab traffic cannot leave the machine)::

    <prefix>-h1            <prefix>-sw                 <prefix>-h2
    [<prefix>-h1] ==veth== [p1]--br0--[p2] ==veth== [<prefix>-h2]   ...

Each host has loopback up, one IPv4 address from the lab's subnet and a
``224.0.0.0/4`` route on its interface.  The multicast route matters: the
hosts have no default route, and without it a plain ``sendto(224.0.0.251)``
or ``IP_ADD_MEMBERSHIP`` on INADDR_ANY (what mDNS stacks do) fails.

Library use::

    with Lab(3) as lab:
        h1, h2, h3 = lab.hosts
        assert h1.ping(h3)
        h2.link_down()                      # partition h2
        server = h2.popen([sys.executable, "server.py"])
        h3.set_loss(20, delay_ms=(10, 30))  # a lossy, slow link (no netem needed)

Loss and delay (``Host.set_loss``, ``set_delay``, ``clear_loss``) need no
netem or iptables: an impaired host's switch port is unplugged from the
bridge and re-plugged through a userspace relay (one process in the switch
namespace, AF_PACKET sockets on two veths).  Per host and direction
(``egress`` = frames the host sends, ``ingress`` = frames it receives,
``both``) each frame is dropped with the given probability and otherwise
delayed by a uniform draw from the range, in FIFO order.  The draws come
from ``random.Random`` seeded by ``Lab(seed=...)``, the port and the
direction.  Multicast, ARP and TCP pass like any other frame; an impaired
host's TCP is limited to one segment per frame (``gso_max_segs 1``) so loss
hits single segments.  ``Host.impairment_stats()`` counts frames seen,
dropped and forwarded.  Unimpaired hosts stay on the kernel bridge.

CLI (needs root)::

    python tools/netlab.py up 3          # build, print, keep until Ctrl-C
    python tools/netlab.py up 4 --loss 20 --delay 10-30 --direction egress
    python tools/netlab.py down [PREFIX] # remove labs (default: all netlab labs)
    python tools/netlab.py cleanup       # remove labs whose owner process died
    python tools/netlab.py list
    python tools/netlab.py check         # self-test

Only the standard library is used; the work is done by ``ip`` (iproute2)
and, for loss and delay, the relay (this file run with an internal flag).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import fnmatch
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Host",
    "Lab",
    "LabInfo",
    "RoutedLab",
    "NetlabError",
    "Unsupported",
    "available",
    "cleanup_stale",
    "list_labs",
    "multicast_probe",
    "remove_lab",
    "wait_for",
]

log = logging.getLogger("meshrpc.netlab")

NETNS_DIR = "/run/netns"  # where `ip netns` keeps its named namespaces
IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1)
BRIDGE = "br0"  # lives inside the switch namespace, so the short name is safe
MULTICAST_NET = "224.0.0.0/4"
MDNS_GROUP = "224.0.0.251"
MDNS_PORT = 5353

# Written as the bridge's interface alias: it marks the switch namespace as
# ours and records who owns the lab, so cleanup can tell crashed runs from
# live ones without keeping any state outside the namespaces themselves.
_MARKER = "meshrpc-netlab"
_MARKER_RE = re.compile(rf"^{_MARKER} pid=(\d+) start=(\d+)$")
_NETNS_RE = re.compile(r"^(?P<prefix>.+)-(?P<role>sw|h\d+)$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_DEFAULT_PREFIX_RE = re.compile(r"^nl[0-9a-z]+-[0-9a-z]+$")

_prefix_counter = itertools.count()
_live_labs: set[Lab] = set()
_live_lock = threading.Lock()


class NetlabError(RuntimeError):
    """An ``ip`` command failed or the lab is in the wrong state."""


class Unsupported(NetlabError):
    """The machine cannot provide a feature (no root, no network namespaces, ...)."""


# --------------------------------------------------------------------------
# low-level helpers


def _find_tool(name: str) -> str | None:
    # Non-login root shells often lack /usr/sbin in PATH, so look there too.
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _tool(name: str) -> str:
    path = _find_tool(name)
    if path is None:
        raise Unsupported(f"`{name}` (iproute2) not found")
    return path


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    log.debug("run: %s%s", " ".join(argv), f"  <<< {input!r}" if input else "")
    proc = subprocess.run(list(argv), input=input, text=True, capture_output=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NetlabError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                          f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _ip_argv(netns: str | None, *, force: bool = False) -> list[str]:
    argv = [_tool("ip")]
    if force:
        argv.append("-force")  # keep going after a failing line (teardown)
    if netns is not None:
        argv += ["-n", netns]
    return argv + ["-batch", "-"]


def _ip_batch(lines: Iterable[str], netns: str | None = None, *,
              force: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run several ``ip`` commands with one process (``ip -batch -``)."""
    return _run(_ip_argv(netns, force=force), input="\n".join(lines) + "\n", check=check)


def _ip_batches_parallel(jobs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Run one ``ip -n NETNS -batch -`` per job, all processes at once."""
    procs: list[tuple[subprocess.Popen[str], str, str]] = []
    errors: list[str] = []
    try:
        for netns, lines in jobs:
            log.debug("run: ip -n %s -batch - <<< %r", netns, lines)
            proc = subprocess.Popen(_ip_argv(netns), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append((proc, netns, "\n".join(lines) + "\n"))
        # All processes start up concurrently; the batches are tiny.
        for proc, netns, script in procs:
            out, err = proc.communicate(script, timeout=30)
            if proc.returncode != 0:
                errors.append(f"{netns}: {(err or out).strip()}")
    finally:
        for proc, _, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise NetlabError("ip -batch failed: " + "; ".join(errors))


def _netns_names() -> list[str]:
    # `ip netns list` reads exactly this directory; listing it is fork-free.
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _netns_age(name: str) -> float:
    """Seconds since the namespace was created (nsfs inode time)."""
    try:
        return max(0.0, time.time() - os.stat(os.path.join(NETNS_DIR, name)).st_mtime)
    except OSError:
        return 0.0


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and ')', so split after it.
    return int(stat.rpartition(")")[2].split()[19])


def _pids_in_netns(names: Iterable[str]) -> list[int]:
    """Processes whose network namespace is one of the named ones."""
    wanted = set()
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) in wanted:
            pids.append(int(entry))
    return pids


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            log.debug("killed pid %d left inside a lab namespace", pid)
        except ProcessLookupError:
            pass


def _delete_netns(names: Sequence[str]) -> list[str]:
    """Delete namespaces (killing what still runs in them); return leftovers."""
    existing = [n for n in names if n in set(_netns_names())]
    if not existing:
        return []
    # A process inside would keep the namespace (and its veths) alive after
    # the name is gone; it could only be a lab process, so it goes too.
    _kill_pids(_pids_in_netns(existing))
    _ip_batch((f"netns del {n}" for n in existing), force=True, check=False)
    present = set(_netns_names())
    return [n for n in existing if n in present]


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _default_prefix() -> str:
    # "nl" + pid + per-process counter: unique among concurrent processes
    # (the pid) and labs within one process (the counter), at most 10 chars.
    existing = {m.group("prefix") for n in _netns_names() if (m := _NETNS_RE.match(n))}
    while True:
        prefix = f"nl{_b36(os.getpid())}-{_b36(next(_prefix_counter))}"
        if prefix not in existing:  # a reused pid could meet a crashed run's lab
            return prefix


def _default_subnet(prefix: str) -> ipaddress.IPv4Network:
    # Every lab has its own isolated switch, so equal subnets would still
    # work; distinct ones just keep logs and packet captures unambiguous.
    k = zlib.crc32(prefix.encode()) % 254 + 1
    return ipaddress.IPv4Network(f"10.231.{k}.0/24")


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


# --------------------------------------------------------------------------
# availability


_availability: tuple[bool, str] | None = None


def available(refresh: bool = False) -> tuple[bool, str]:
    """Can labs be built here?  Returns ``(ok, reason)``.

    Really creates (and deletes) a throwaway namespace with a bridge and a
    veth pair and runs a command in it, because containers often have root
    and iproute2 but lack the capabilities or kernel modules.  The result is
    cached; pass ``refresh=True`` to probe again.
    """
    global _availability
    if _availability is None or refresh:
        _availability = _probe()
        log.debug("available: %s", _availability)
    return _availability


def _probe() -> tuple[bool, str]:
    if sys.platform != "linux":
        return False, "netlab needs Linux network namespaces"
    if os.geteuid() != 0:
        return False, "netlab needs root (network namespaces)"
    ip = _find_tool("ip")
    if ip is None:
        return False, "`ip` (iproute2) not found"
    name = f"nlprobe{_b36(os.getpid())}"
    result = True, "ok"
    try:
        _delete_netns([name])  # left over by an earlier process with our pid?
        _ip_batch([f"netns add {name}"])
        _ip_batch([f"link add name {BRIDGE} type bridge",
                   "link add name probe0 type veth peer name probe1",
                   f"link set dev probe0 master {BRIDGE}"], netns=name)
        _run([ip, "netns", "exec", name, "true"])
    except (NetlabError, OSError, subprocess.SubprocessError) as exc:
        result = False, f"cannot build a network namespace lab: {exc}"
    try:
        if _delete_netns([name]):
            result = False, f"cannot delete the probe namespace {name}"
    except (NetlabError, OSError) as exc:
        result = False, f"cannot delete the probe namespace {name}: {exc}"
    return result


# --------------------------------------------------------------------------
# the lab


class Host:
    """One lab host: a namespace with one veth into the lab switch."""

    def __init__(self, lab: Lab, index: int, address: str) -> None:
        self.lab = lab
        self.index = index  # 1-based
        self.name = f"h{index}"
        self.netns = f"{lab.prefix}-h{index}"
        self.interface = f"{lab.prefix}-h{index}"  # veth end inside the host
        self.switch_port = f"p{index}"  # veth end on the bridge (switch netns)
        self.address = address  # primary IPv4 address, without prefix length
        self._promote_secondaries = False

    def __repr__(self) -> str:
        return f"<Host {self.name} netns={self.netns} address={self.address}>"

    # ---- running things inside the host

    def command(self, argv: str | Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside this host (a str goes to ``sh -c``)."""
        if isinstance(argv, str):
            argv = ["sh", "-c", argv]
        return [_tool("ip"), "netns", "exec", self.netns, *map(os.fspath, argv)]

    def run(self, argv: str | Sequence[str], **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside the host; keyword arguments pass through."""
        self.lab._require_up()
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: str | Sequence[str], **kwargs) -> subprocess.Popen:
        """``subprocess.Popen`` inside the host; the lab stops it at teardown."""
        self.lab._require_up()
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.lab._track(proc)
        return proc

    def python(self, code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        """Run a Python snippet inside the host with this interpreter.

        Uses ``-I -S`` (no site, no user paths) for a quick start; the
        snippet can import the standard library only.
        """
        return self.run([sys.executable, "-I", "-S", "-c", code, *args], **kwargs)

    def ping(self, target: Host | str, timeout: float = 1.0) -> bool:
        """True if ``target`` answers an ICMP echo within ``timeout`` seconds."""
        address = target.address if isinstance(target, Host) else str(target)
        proc = self.python(_PING_SCRIPT, address, str(timeout),
                           capture_output=True, text=True, timeout=timeout + 30)
        if proc.returncode not in (0, 1):
            raise NetlabError(f"ping from {self.name} failed: {proc.stderr.strip()}")
        return proc.returncode == 0

    # ---- link state

    def link_down(self) -> None:
        """Unplug the host's cable: its switch port goes down.

        Done on the switch side so the host keeps its addresses and routes
        (an admin-down interface would lose its routes, including the
        multicast one); the host only sees carrier loss, like a pulled cable,
        and traffic is dropped in both directions.
        """
        _ip_batch([f"link set dev {self.switch_port} down"], netns=self.lab.switch_netns)
        log.info("%s: link down", self.name)

    def link_up(self) -> None:
        """Plug the cable back in; traffic flows again with no reconfiguration."""
        _ip_batch([f"link set dev {self.switch_port} up"], netns=self.lab.switch_netns)
        log.info("%s: link up", self.name)

    def link_is_up(self) -> bool:
        out = _run([_tool("ip"), "-j", "-n", self.lab.switch_netns, "link", "show",
                    "dev", self.switch_port]).stdout
        return "UP" in json.loads(out)[0]["flags"]

    def link_counters(self) -> dict[str, int]:
        """The kernel's frame and byte counters of the host's interface (rx_/tx_ packets, bytes)."""
        out = _run([_tool("ip"), "-j", "-s", "-n", self.netns, "link", "show",
                    "dev", self.interface]).stdout
        stats = json.loads(out)[0]["stats64"]
        return {f"{way}_{what}": int(stats[way][what])
                for way in ("rx", "tx") for what in ("packets", "bytes")}

    # ---- packet loss and delay (userspace relay, see Impairment)

    def set_loss(self, percent: float, *, delay_ms: tuple[float, float] | None = None,
                 direction: str = "both") -> None:
        """Drop ``percent`` % of the host's frames, optionally delaying the rest.

        ``direction`` is ``"both"`` (default: frames the host sends and frames
        it receives, each with its own draw), ``"egress"`` (only what it
        sends: "every frame this host sends has a p chance of loss") or
        ``"ingress"``.  ``delay_ms=(low, high)`` delays each passing frame by
        a uniform draw in that range, in the same direction(s).  0 % with no
        delay removes the impairment (:meth:`clear_loss`).  Works without
        netem: frames go through the lab's :class:`ImpairmentRelay`.
        """
        if not 0 <= percent <= 100:
            raise ValueError("percent must be within 0..100")
        low, high = delay_ms if delay_ms is not None else (0.0, 0.0)
        if percent == 0 and high == 0:
            self.clear_loss()
            return
        impairment = Impairment(loss=percent / 100, delay=(low / 1000, high / 1000))
        none = Impairment()
        if direction not in ("both", "egress", "ingress"):
            raise ValueError("direction must be 'both', 'egress' or 'ingress'")
        self.lab._relay().impair(
            self,
            egress=impairment if direction in ("both", "egress") else none,
            ingress=impairment if direction in ("both", "ingress") else none)
        log.info("%s: %g%% loss, %g-%g ms delay (%s)", self.name, percent, low, high, direction)

    def set_delay(self, low_ms: float, high_ms: float | None = None, *,
                  direction: str = "both") -> None:
        """Delay frames by ``low_ms``..``high_ms`` (uniform), losing none."""
        self.set_loss(0, delay_ms=(low_ms, low_ms if high_ms is None else high_ms),
                      direction=direction)

    def clear_loss(self) -> None:
        """Remove loss and delay: the host's port goes back onto the bridge."""
        if self.lab._impairment_relay is not None:
            self.lab._impairment_relay.release(self)

    def impairment_stats(self) -> dict[str, dict[str, int]]:
        """Frames seen/dropped/forwarded per direction since the impairment began."""
        if self.lab._impairment_relay is None:
            return {}
        return self.lab._impairment_relay.stats().get(self.switch_port, {})

    # ---- addresses (interface changes at runtime)

    def addresses(self) -> list[str]:
        """The IPv4 addresses the kernel has on the host's interface now."""
        out = _run([_tool("ip"), "-j", "-4", "-n", self.netns, "addr", "show",
                    "dev", self.interface]).stdout
        return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]

    def add_address(self, address: str | None = None) -> str:
        """Add another IPv4 address (default: a free one from the lab subnet)."""
        iface = self.lab._allocate(address)
        if not self._promote_secondaries:
            # Otherwise deleting the primary address would silently delete
            # the secondaries of the same subnet with it (Linux default).
            self.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/"
                      f"{self.interface}/promote_secondaries"], check=True)
            self._promote_secondaries = True
        try:
            _ip_batch([f"addr add {iface.with_prefixlen} dev {self.interface}",
                       # re-added in case an earlier removal left no address
                       f"route replace {MULTICAST_NET} dev {self.interface}"],
                      netns=self.netns)
        except NetlabError:
            self.lab._release(str(iface.ip))
            raise
        if not self.address:  # every address had been removed
            self.address = str(iface.ip)
        log.info("%s: added %s", self.name, iface.with_prefixlen)
        return str(iface.ip)

    def remove_address(self, address: str) -> None:
        """Remove an address; removing the primary promotes the next one."""
        address = str(ipaddress.IPv4Interface(address).ip)
        prefixlen = self._prefixlen_of(address)
        _ip_batch([f"addr del {address}/{prefixlen} dev {self.interface}"], netns=self.netns)
        self.lab._release(address)
        if address == self.address:
            remaining = self.addresses()
            self.address = remaining[0] if remaining else ""
        log.info("%s: removed %s", self.name, address)

    def move_address(self, new_address: str | None = None) -> str:
        """Replace the primary address, like a DHCP renumbering; returns it."""
        old = self.address
        new = self.add_address(new_address)
        self.address = new
        if old:
            self.remove_address(old)
        return new

    def _prefixlen_of(self, address: str) -> int:
        out = _run([_tool("ip"), "-j", "-4", "-n", self.netns, "addr", "show",
                    "dev", self.interface]).stdout
        for link in json.loads(out):
            for a in link.get("addr_info", []):
                if a["local"] == address:
                    return int(a["prefixlen"])
        raise NetlabError(f"{self.name} has no address {address}")


class Lab:
    """N hosts on one switch, every piece inside its own network namespace.

    Construction only plans names and addresses; :meth:`setup` (or entering
    the ``with`` block) builds the lab and :meth:`teardown` removes it, also
    after a failed setup.  Labs still up at interpreter exit are removed by an
    ``atexit`` hook; :func:`cleanup_stale` handles crashed runs.
    """

    def __init__(self, n_hosts: int = 3, prefix: str | None = None,
                 subnet: str | None = None, seed: int = 1) -> None:
        if n_hosts < 1:
            raise ValueError("a lab needs at least one host")
        if prefix is None:
            prefix = _default_prefix()
        elif not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad prefix {prefix!r}: use letters, digits, '_' and '-'")
        longest = f"{prefix}-h{n_hosts}"
        if len(longest) > IFNAMSIZ:
            raise ValueError(f"prefix {prefix!r} too long: interface {longest!r} would "
                             f"exceed {IFNAMSIZ} characters")
        self.prefix = prefix
        self.subnet = ipaddress.IPv4Network(subnet) if subnet else _default_subnet(prefix)
        pool = itertools.islice(self.subnet.hosts(), n_hosts)
        self.hosts = [Host(self, i, str(ip)) for i, ip in enumerate(pool, 1)]
        if len(self.hosts) < n_hosts:
            raise ValueError(f"subnet {self.subnet} is too small for {n_hosts} hosts")
        self.switch_netns = f"{prefix}-sw"
        self.setup_seconds: float | None = None
        self._used = {h.address for h in self.hosts}
        self._procs: list[subprocess.Popen] = []
        self._state = "new"  # new -> building -> up -> down
        self._lock = threading.RLock()
        self._owner_pid = os.getpid()
        self.seed = seed  # of the impairment relay's loss/delay draws
        self._impairment_relay: ImpairmentRelay | None = None

    def __repr__(self) -> str:
        return f"<Lab {self.prefix} {len(self.hosts)} hosts {self.subnet} {self._state}>"

    def __enter__(self) -> Lab:
        if self._state == "new":
            self.setup()
        return self

    def __exit__(self, *exc_info) -> None:
        self.teardown()

    @property
    def namespaces(self) -> list[str]:
        """All namespace names of the lab, hosts first (the teardown order)."""
        return [h.netns for h in self.hosts] + [self.switch_netns]

    @property
    def is_up(self) -> bool:
        return self._state == "up"

    def host(self, name: str) -> Host:
        """A host by its short name, e.g. ``lab.host("h2")``."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def setup(self) -> Lab:
        with self._lock:
            if self._state != "new":
                raise NetlabError(f"lab {self.prefix} was already set up")
            clash = set(self.namespaces) & set(_netns_names())
            if clash:
                raise NetlabError(f"namespaces {sorted(clash)} already exist; remove "
                                  f"them with `netlab.py down {self.prefix}`")
            self._state = "building"
            with _live_lock:
                _live_labs.add(self)
            started = time.monotonic()
            try:
                self._build()
            except BaseException:
                log.warning("lab %s: setup failed, tearing down", self.prefix)
                self.teardown()
                raise
            self._state = "up"
            self.setup_seconds = time.monotonic() - started
            log.info("lab %s: %d hosts on %s up in %.1f ms", self.prefix,
                     len(self.hosts), self.subnet, self.setup_seconds * 1000)
            return self

    def _build(self) -> None:
        # The switch namespace comes first so that a crash at any later point
        # leaves a namespace that cleanup_stale can attribute to this lab.
        _ip_batch(f"netns add {ns}" for ns in [self.switch_netns] + [h.netns for h in self.hosts])
        owner = f"{_MARKER} pid={os.getpid()} start={_proc_start_time(os.getpid())}"
        switch = [
            # Snooping off: the lab has no IGMP querier, so learned group
            # memberships would expire mid-test and delivery would hinge on
            # IGMP timing; plain flooding is what a dumb LAN switch does.
            # With STP off (the default) ports forward as soon as they are up.
            f"link add name {BRIDGE} type bridge mcast_snooping 0",
            f'link set dev {BRIDGE} alias "{owner}"',
            f"link set dev {BRIDGE} up",
        ]
        for h in self.hosts:
            # Both veth ends are created from inside the lab namespaces (the
            # peer straight into the host's), so the root namespace never
            # sees an interface, not even for a moment.
            switch += [
                f"link add name {h.switch_port} type veth peer name {h.interface} netns {h.netns}",
                f"link set dev {h.switch_port} master {BRIDGE} up",
            ]
        _ip_batch(switch, netns=self.switch_netns)
        _ip_batches_parallel([
            (h.netns, [
                "link set dev lo up",
                f"addr add {h.address}/{self.subnet.prefixlen} dev {h.interface}",
                f"link set dev {h.interface} up",
                f"route add {MULTICAST_NET} dev {h.interface}",
            ])
            for h in self.hosts
        ])

    def teardown(self) -> None:
        """Remove everything; safe to call repeatedly and after failed setup."""
        with self._lock:
            if self._state in ("new", "down"):
                return
            started = time.monotonic()
            if self._impairment_relay is not None:
                self._impairment_relay.close()
                self._impairment_relay = None
            self._stop_processes()
            leftovers = _delete_netns(self.namespaces)
            self._state = "down"
            with _live_lock:
                _live_labs.discard(self)
            if leftovers:
                raise NetlabError(f"lab {self.prefix}: could not delete {leftovers}")
            log.info("lab %s: torn down in %.1f ms", self.prefix,
                     (time.monotonic() - started) * 1000)

    def _relay(self) -> ImpairmentRelay:
        with self._lock:
            self._require_up()
            if self._impairment_relay is None:
                self._impairment_relay = ImpairmentRelay(self)
            return self._impairment_relay

    def _require_up(self) -> None:
        if self._state != "up":
            raise NetlabError(f"lab {self.prefix} is not up ({self._state})")

    def _track(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            self._procs.append(proc)

    def _stop_processes(self, grace: float = 2.0) -> None:
        # SIGTERM first so servers under test can shut down cleanly; whatever
        # is still inside a lab namespace afterwards gets SIGKILL from
        # _delete_netns.
        running = [p for p in self._procs if p.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def _allocate(self, address: str | None) -> ipaddress.IPv4Interface:
        with self._lock:
            if address is None:
                # From the top of the subnet, keeping .1, .2 ... for h1, h2 ...
                for ip in reversed(list(self.subnet.hosts())):
                    if str(ip) not in self._used:
                        break
                else:
                    raise NetlabError(f"no free address left in {self.subnet}")
                iface = ipaddress.IPv4Interface(f"{ip}/{self.subnet.prefixlen}")
            else:
                iface = ipaddress.IPv4Interface(address)
                if str(iface.ip) in self._used:
                    raise ValueError(f"{iface.ip} is already in use in lab {self.prefix}")
                if "/" not in address and iface.ip in self.subnet:
                    iface = ipaddress.IPv4Interface(f"{iface.ip}/{self.subnet.prefixlen}")
            self._used.add(str(iface.ip))
            return iface

    def _release(self, address: str) -> None:
        with self._lock:
            self._used.discard(address)


@atexit.register
def _teardown_live_labs() -> None:
    with _live_lock:
        labs = [lab for lab in _live_labs if lab._owner_pid == os.getpid()]  # not a fork's
    for lab in labs:
        try:
            lab.teardown()
        except Exception:  # keep going: the others still need removing
            log.exception("atexit teardown of lab %s failed", lab.prefix)


# --------------------------------------------------------------------------
# impairment: loss and delay without netem (a userspace relay in the switch)
#
#   [hN] ==veth== pN <-- relay process --> rN ==veth== qN --br0-- other ports
#
# An impaired host's switch port pN leaves the bridge; a second veth pair
# takes its place (qN on the bridge, rN held by the relay), and one relay
# process inside the switch namespace copies frames between pN and rN over
# AF_PACKET sockets, dropping and delaying them per direction.  Unimpaired
# hosts stay on the kernel bridge.  PACKET_VNET_HDR hands the kernel's
# checksum/segmentation-offload state over with every frame, so TCP passes
# unchanged without ethtool.


@dataclass(frozen=True)
class Impairment:
    """What one direction of a host's link does to frames."""

    loss: float = 0.0  # probability that a frame is dropped, 0..1
    delay: tuple[float, float] = (0.0, 0.0)  # seconds, a uniform draw per frame

    def as_json(self) -> dict[str, object]:
        return {"loss": self.loss, "delay": list(self.delay)}


class FrameQueue:
    """One direction of an impaired link, without I/O: drop, delay, release.

    Every offered frame draws once from ``rng`` against the loss probability
    and, if kept, once for its delay.  Frames leave in arrival order, as from
    a real link's queue (a short delay never overtakes a longer one), so the
    delay of a frame is at least its own draw.
    """

    MAX_QUEUED = 4096  # frames; beyond it the queue tail-drops, like a router

    def __init__(self, rng: random.Random, impairment: Impairment | None = None) -> None:
        self.rng = rng
        self.impairment = impairment or Impairment()
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_due = 0.0
        self.frames = self.dropped = self.forwarded = self.overflow = 0

    def offer(self, frame: bytes, now: float) -> bool:
        """Queue ``frame`` (arrived at ``now``) unless it is lost; True if kept."""
        self.frames += 1
        loss = self.impairment.loss
        if loss and self.rng.random() < loss:
            self.dropped += 1
            return False
        if len(self._queue) >= self.MAX_QUEUED:
            self.overflow += 1
            return False
        low, high = self.impairment.delay
        due = now + (self.rng.uniform(low, high) if high > 0 else 0.0)
        self._last_due = max(due, self._last_due)
        self._queue.append((self._last_due, frame))
        return True

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def release(self, now: float) -> list[bytes]:
        """The frames whose delay is over at ``now``, oldest first."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            out.append(self._queue.popleft()[1])
        self.forwarded += len(out)
        return out

    def counters(self) -> dict[str, int]:
        return {"frames": self.frames, "dropped": self.dropped,
                "forwarded": self.forwarded, "overflow": self.overflow,
                "queued": len(self._queue)}


class ImpairmentRelay:
    """The lab's relay process and the wiring of impaired hosts through it.

    Created on a lab's first :meth:`Host.set_loss`; one process serves every
    impaired host.  Draws come from ``random.Random`` seeded with the lab's
    ``seed``, the port and the direction, so a run is reproducible up to
    the timing of the frames themselves.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._lock = threading.Lock()
        self._attached: set[str] = set()
        argv = [sys.executable, "-I", "-S", "-u", os.path.abspath(__file__), _RELAY_FLAG,
                str(lab.seed)]
        self._proc = subprocess.Popen(
            [_tool("ip"), "netns", "exec", lab.switch_netns, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._call(op="ping")

    def _call(self, **command: object) -> dict:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps(command) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except (BrokenPipeError, ValueError):
            line = ""
        if not line:
            raise NetlabError(f"lab {self.lab.prefix}: impairment relay exited "
                              f"(status {self._proc.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise NetlabError(f"impairment relay: {reply.get('error')}")
        return reply

    def impair(self, host: Host, *, egress: Impairment, ingress: Impairment) -> None:
        with self._lock:
            if host.switch_port not in self._attached:
                self._attach(host)
            self._call(op="set", port=host.switch_port, egress=egress.as_json(),
                       ingress=ingress.as_json())

    def _attach(self, host: Host) -> None:
        inner, bridged = f"r{host.index}", f"q{host.index}"
        sw = self.lab.switch_netns
        _ip_batch([f"link add name {inner} type veth peer name {bridged}",
                   f"link set dev {inner} up promisc on",
                   f"link set dev {bridged} up"], netns=sw)
        # One TCP segment per frame from the impaired host, so that loss hits
        # segments, not 64 KiB offload bursts.
        _ip_batch([f"link set dev {host.interface} gso_max_segs 1"], netns=host.netns)
        self._call(op="attach", port=host.switch_port, inner=inner)
        _ip_batch([f"link set dev {host.switch_port} nomaster",
                   f"link set dev {host.switch_port} promisc on",
                   f"link set dev {bridged} master {BRIDGE}"], netns=sw)
        self._attached.add(host.switch_port)

    def release(self, host: Host) -> None:
        """Put the host's port back on the bridge (no more loss or delay)."""
        with self._lock:
            if host.switch_port not in self._attached:
                return
            sw = self.lab.switch_netns
            _ip_batch([f"link set dev q{host.index} nomaster",
                       f"link set dev {host.switch_port} master {BRIDGE}"], netns=sw)
            self._call(op="detach", port=host.switch_port)
            _ip_batch([f"link del dev r{host.index}"], netns=sw)
            self._attached.discard(host.switch_port)
            log.info("%s: impairment removed", host.name)

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{port: {"egress"|"ingress": counters}}`` of the attached ports."""
        with self._lock:
            return self._call(op="stats")["ports"]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.close()  # EOF: the relay exits
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()


_RELAY_FLAG = "--impairment-relay"  # argv[1] that runs the relay loop (internal)
_VNET_HDR_LEN = 10  # struct virtio_net_hdr
_PACKET_VNET_HDR = 15  # SOL_PACKET option (linux/if_packet.h)
_SOL_PACKET = 263
_ETH_P_ALL = 0x0003


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((ifname, _ETH_P_ALL))
    sock.setblocking(False)
    return sock


class _RelayPort:
    """An impaired port inside the relay process: two sockets, two queues."""

    def __init__(self, port: str, inner: str, seed: str) -> None:
        self.port, self.inner = port, inner
        self.host_side = _packet_socket(port)  # frames from/to the host
        self.lan_side = _packet_socket(inner)  # frames from/to the bridge
        self.egress = FrameQueue(random.Random(f"{seed}:{port}:egress"))
        self.ingress = FrameQueue(random.Random(f"{seed}:{port}:ingress"))
        self.send_errors = 0

    def close(self) -> None:
        self.host_side.close()
        self.lan_side.close()

    def flush(self, now: float) -> None:
        for queue, out in ((self.egress, self.lan_side), (self.ingress, self.host_side)):
            for frame in queue.release(now):
                try:
                    out.send(frame)
                except OSError:  # port down (link_down) or queue full: a lost frame
                    self.send_errors += 1


def _relay_main(seed: str) -> int:
    """The relay loop: JSON commands on stdin, one JSON reply each on stdout."""
    ports: dict[str, _RelayPort] = {}
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    sel.register(stdin, selectors.EVENT_READ, None)
    pending = b""

    def handle(command: dict) -> dict:
        op = command.get("op")
        if op == "ping":
            return {}
        if op == "attach":
            port = _RelayPort(command["port"], command["inner"], seed)
            ports[port.port] = port
            sel.register(port.host_side, selectors.EVENT_READ, (port, port.egress))
            sel.register(port.lan_side, selectors.EVENT_READ, (port, port.ingress))
            return {}
        if op == "set":
            port = ports[command["port"]]
            for name in ("egress", "ingress"):
                spec = command[name]
                getattr(port, name).impairment = Impairment(float(spec["loss"]),
                                                            tuple(spec["delay"]))
            return {}
        if op == "detach":
            port = ports.pop(command["port"])
            port.flush(float("inf"))
            for sock in (port.host_side, port.lan_side):
                sel.unregister(sock)
            port.close()
            return {}
        if op == "stats":
            return {"ports": {name: {"egress": p.egress.counters(),
                                     "ingress": p.ingress.counters(),
                                     "send_errors": p.send_errors}
                              for name, p in ports.items()}}
        raise ValueError(f"unknown op {op!r}")

    while True:
        dues = [d for p in ports.values() for q in (p.egress, p.ingress)
                if (d := q.next_due()) is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        for key, _ in sel.select(timeout):
            if key.data is None:
                chunk = os.read(stdin.fileno(), 65536)
                if not chunk:
                    return 0
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        reply = {"ok": True, **handle(json.loads(line))}
                    except Exception as exc:  # report it; the relay keeps running
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    sys.stdout.write(json.dumps(reply) + "\n")
                    sys.stdout.flush()
                continue
            port, queue = key.data
            now = time.monotonic()
            for _ in range(256):  # a batch, then let the other sockets in
                try:
                    frame, address = key.fileobj.recvfrom(1 << 18)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. ENETDOWN while the port is down
                    break
                if address[2] == socket.PACKET_OUTGOING:
                    continue  # our own send on this port, not a frame to relay
                queue.offer(frame, now)
        now = time.monotonic()
        for port in ports.values():
            port.flush(now)


# --------------------------------------------------------------------------
# routed subnets (issue 14: the etcd registry across routers)


class RoutedLab(Lab):
    """Hosts on several subnets joined by a router: unicast is routed, multicast (mDNS) stays on its
    subnet, as across a real router. ``RoutedLab((2, 2, 1))``: h1, h2 on subnet 0, h3, h4 on subnet 1,
    h5 on subnet 2.

    The router is the lab's ``-sw`` namespace: one bridge per subnet (``br0``, ``br1``...), each holding
    the router's address ``.1`` of its subnet, and IPv4 forwarding on. Hosts get ``.2``, ``.3``... and a
    default route through the router. Everything else (run, popen, link_down, teardown, stale-lab
    cleanup) is the plain Lab's.
    """

    def __init__(self, subnet_sizes: Sequence[int] = (2, 2, 1), prefix: str | None = None) -> None:
        if not subnet_sizes or min(subnet_sizes) < 1:
            raise ValueError("every subnet needs at least one host")
        super().__init__(sum(subnet_sizes), prefix)
        k = zlib.crc32(self.prefix.encode()) % 254 + 1
        self.subnets = [ipaddress.IPv4Network(f"10.{232 + i}.{k}.0/24") for i in range(len(subnet_sizes))]
        self.router_addresses = [str(next(net.hosts())) for net in self.subnets]
        self.subnet_index: dict[str, int] = {}
        hosts = iter(self.hosts)
        for i, (net, size) in enumerate(zip(self.subnets, subnet_sizes)):
            addresses = itertools.islice(net.hosts(), 1, size + 1)       # .1 is the router's
            for address in addresses:
                host = next(hosts)
                host.address = str(address)
                self.subnet_index[host.name] = i
        self._used = {h.address for h in self.hosts}

    def subnet_hosts(self, index: int) -> list[Host]:
        return [h for h in self.hosts if self.subnet_index[h.name] == index]

    def _build(self) -> None:
        _ip_batch(f"netns add {ns}" for ns in [self.switch_netns] + [h.netns for h in self.hosts])
        owner = f"{_MARKER} pid={os.getpid()} start={_proc_start_time(os.getpid())}"
        router = []
        for i, (net, address) in enumerate(zip(self.subnets, self.router_addresses)):
            router += [f"link add name br{i} type bridge mcast_snooping 0", f"link set dev br{i} up",
                       f"addr add {address}/{net.prefixlen} dev br{i}"]
        router.insert(1, f'link set dev {BRIDGE} alias "{owner}"')     # br0 carries the owner marker
        router.append("link set dev lo up")
        for h in self.hosts:
            router += [f"link add name {h.switch_port} type veth peer name {h.interface} netns {h.netns}",
                       f"link set dev {h.switch_port} master br{self.subnet_index[h.name]} up"]
        _ip_batch(router, netns=self.switch_netns)
        _run([_tool("ip"), "netns", "exec", self.switch_netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _ip_batches_parallel([
            (h.netns, [
                "link set dev lo up",
                f"addr add {h.address}/24 dev {h.interface}",
                f"link set dev {h.interface} up",
                f"route add {MULTICAST_NET} dev {h.interface}",
                f"route add default via {self.router_addresses[self.subnet_index[h.name]]}",
            ])
            for h in self.hosts
        ])

    def _allocate(self, address: str | None) -> ipaddress.IPv4Interface:
        raise NetlabError("extra addresses are not supported in a RoutedLab")


# --------------------------------------------------------------------------
# stale labs


@dataclass(frozen=True)
class LabInfo:
    """A lab found on the machine (see :func:`list_labs`)."""

    prefix: str
    namespaces: tuple[str, ...]
    owner_pid: int | None  # None if the switch carries no owner marker
    owner_alive: bool
    age: float  # seconds since the lab's first namespace was created


def list_labs(prefix_glob: str = "*") -> list[LabInfo]:
    """Netlab labs present on the machine whose prefix matches the glob.

    A group of ``<prefix>-sw`` / ``<prefix>-hN`` namespaces counts as a
    netlab lab if its switch carries the owner marker, or if the prefix has
    the shape of a default netlab prefix; other namespaces are never listed.
    """
    groups: dict[str, list[str]] = {}
    for name in _netns_names():
        m = _NETNS_RE.match(name)
        if m and fnmatch.fnmatchcase(m.group("prefix"), prefix_glob):
            groups.setdefault(m.group("prefix"), []).append(name)
    labs = []
    for prefix, names in sorted(groups.items()):
        owner = _read_owner(f"{prefix}-sw") if f"{prefix}-sw" in names else None
        if owner is None and not _DEFAULT_PREFIX_RE.match(prefix):
            continue  # not recognisably ours
        age = max(_netns_age(n) for n in names)
        if owner is None:
            # Unmarked: crashed before the switch was configured, or being
            # built right now by another process (a few ms window).
            pid, alive = None, age < 10.0
        else:
            pid, start = owner
            alive = _proc_start_time(pid) == start  # guards against pid reuse
        labs.append(LabInfo(prefix, tuple(names), pid, alive, age))
    return labs


def _read_owner(switch_netns: str) -> tuple[int, int] | None:
    proc = _run([_tool("ip"), "-j", "-n", switch_netns, "link", "show", "dev", BRIDGE],
                check=False)
    if proc.returncode != 0:
        return None
    try:
        m = _MARKER_RE.match(json.loads(proc.stdout)[0].get("ifalias", ""))
    except (ValueError, IndexError):
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def cleanup_stale(prefix_glob: str = "*", *, force: bool = False) -> list[str]:
    """Remove labs left behind by crashed runs; return the deleted namespaces.

    Labs whose owner process is still alive are kept unless ``force`` is set
    (so cleaning up at the start of a test session does not break labs of
    concurrently running sessions).
    """
    removed = []
    for info in list_labs(prefix_glob):
        if info.owner_alive and not force:
            log.debug("keeping lab %s (owner pid %s alive)", info.prefix, info.owner_pid)
            continue
        removed += _remove_namespaces(info.prefix, info.namespaces)
    return removed


def remove_lab(prefix: str) -> list[str]:
    """Remove all namespaces of the lab ``prefix``, whoever owns it."""
    names = [n for n in _netns_names()
             if (m := _NETNS_RE.match(n)) and m.group("prefix") == prefix]
    return _remove_namespaces(prefix, names)


def _remove_namespaces(prefix: str, names: Sequence[str]) -> list[str]:
    # Hosts before the switch, so an interrupted removal stays attributable.
    ordered = sorted(names, key=lambda n: n.endswith("-sw"))
    leftovers = _delete_netns(ordered)
    if leftovers:
        log.error("lab %s: could not delete %s", prefix, leftovers)
    log.info("removed lab %s (%s)", prefix, ", ".join(ordered))
    return [n for n in ordered if n not in leftovers]


# --------------------------------------------------------------------------
# probes run inside the hosts (kept as small self-contained scripts)


# ICMP echo over a raw socket: the lab needs no `ping` binary.  Sends one
# echo every 200 ms until a matching reply arrives; exit 0 = reachable.
_PING_SCRIPT = r"""
import os, socket, struct, sys, time
dst, timeout = sys.argv[1], float(sys.argv[2])
def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
end = time.monotonic() + timeout
seq = 0
while time.monotonic() < end:
    seq += 1
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"netlab!!"
    try:
        sock.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (dst, 0))
    except OSError:
        pass  # e.g. EHOSTUNREACH while the neighbour entry is failed
    resend = min(end, time.monotonic() + 0.2)
    while (left := resend - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, src = sock.recvfrom(2048)
        except (socket.timeout, OSError):
            break
        ihl = (data[0] & 15) * 4
        kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if kind == 0 and rid == ident and src[0] == dst:
            sys.exit(0)
sys.exit(1)
"""

# Joins the group on INADDR_ANY (resolved through the 224.0.0.0/4 route, as
# mDNS stacks do), says READY, then prints the first probe datagram it gets.
_MCAST_RECEIVER = r"""
import socket, sys
group, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton("0.0.0.0"))
print("READY", flush=True)
while True:
    data, src = s.recvfrom(4096)
    if data == token:
        print("GOT", src[0], flush=True)
        break
"""

# Sends one datagram per line read from stdin, until EOF.
_MCAST_SENDER = r"""
import socket, sys
group, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
for _ in sys.stdin:
    s.sendto(token, (group, port))
"""


def multicast_probe(sender: Host, receivers: Sequence[Host], group: str = MDNS_GROUP,
                    port: int = MDNS_PORT, timeout: float = 5.0,
                    resend_interval: float = 0.5) -> dict[str, bool]:
    """Send a UDP multicast datagram from ``sender``; who receives it?

    Waits until every receiver has joined the group, then sends (again every
    ``resend_interval`` seconds while some are missing) until all receivers
    got it or ``timeout`` passes.  Returns ``{host name: received}``.
    """
    token = f"netlab-probe-{os.urandom(6).hex()}"
    py = [sys.executable, "-I", "-S", "-u", "-c"]
    deadline = time.monotonic() + timeout
    procs: dict[str, subprocess.Popen] = {}
    lines: dict[str, list[str]] = {}
    send: subprocess.Popen | None = None
    try:
        for r in receivers:
            procs[r.name] = r.popen(py + [_MCAST_RECEIVER, group, str(port), token],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        send = sender.popen(py + [_MCAST_SENDER, group, str(port), token],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        with selectors.DefaultSelector() as sel:
            for name, proc in procs.items():
                sel.register(proc.stdout, selectors.EVENT_READ, name)
                lines[name] = []
            buffers = {name: b"" for name in procs}

            def pump(until: float, done: Callable[[], bool]) -> None:
                # Collect receiver output lines until done() or the time is up.
                while not done() and (left := until - time.monotonic()) > 0:
                    for key, _ in sel.select(left):
                        chunk = os.read(key.fileobj.fileno(), 4096)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        buffers[key.data] += chunk
                        *complete, buffers[key.data] = buffers[key.data].split(b"\n")
                        lines[key.data] += [c.decode(errors="replace") for c in complete]
                    if not sel.get_map():
                        return

            def count(prefix: str) -> int:
                return sum(any(ln.startswith(prefix) for ln in got) for got in lines.values())

            pump(deadline, lambda: count("READY") == len(procs))
            if count("READY") < len(procs):
                log.warning("multicast probe: not all receivers joined in time")
            assert send.stdin is not None
            while time.monotonic() < deadline and count("GOT") < len(procs):
                try:
                    send.stdin.write(b"\n")
                    send.stdin.flush()
                except BrokenPipeError:  # sender died, e.g. no route; see stderr
                    break
                pump(min(deadline, time.monotonic() + resend_interval),
                     lambda: count("GOT") == len(procs))
    finally:
        for name, proc in [*procs.items(), *([(sender.name, send)] if send else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdin:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            if err:
                log.debug("multicast probe on %s: %s", name, err)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
    return {name: any(ln.startswith("GOT") for ln in lines.get(name, [])) for name in procs}


# --------------------------------------------------------------------------
# CLI


def _root_links() -> list[str]:
    out = _run([_tool("ip"), "-o", "link", "show"]).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def _print_lab(lab: Lab) -> None:
    print(f"lab {lab.prefix}: {len(lab.hosts)} hosts on {lab.subnet}, "
          f"up in {lab.setup_seconds * 1000:.1f} ms")
    print(f"  switch  {lab.switch_netns}  (bridge {BRIDGE})")
    rows = [("host", "netns", "interface", "address")]
    rows += [(h.name, h.netns, h.interface, f"{h.address}/{lab.subnet.prefixlen}")
             for h in lab.hosts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cmd_up(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    with Lab(args.hosts, prefix=args.prefix, subnet=args.subnet, seed=args.seed) as lab:
        if args.loss or args.delay:
            low, _, high = (args.delay or "0").partition("-")
            for host in lab.hosts:
                host.set_loss(args.loss, delay_ms=(float(low), float(high or low)),
                              direction=args.direction)
        _print_lab(lab)
        if args.loss or args.delay:
            print(f"  every host: {args.loss:g}% loss, {args.delay or 0} ms delay "
                  f"({args.direction})")
        print(f"\nshell in a host:  ip netns exec {lab.hosts[0].netns} bash")
        print(f"stop:             Ctrl-C, or `{sys.argv[0]} down {lab.prefix}`", flush=True)
        # Also stop when the lab was removed from another shell (`down`).
        while not stop.wait(0.5):
            if not os.path.exists(os.path.join(NETNS_DIR, lab.switch_netns)):
                print("lab removed externally")
                break
    print(f"lab {lab.prefix} removed")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    prefix = args.prefix
    if prefix and not any(c in prefix for c in "*?["):
        removed = remove_lab(prefix)
    else:
        removed = cleanup_stale(prefix or "*", force=True)
    print("\n".join(removed) if removed else "nothing to remove")
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    removed = cleanup_stale(args.glob)
    print("\n".join(removed) if removed else "no stale labs")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    labs = list_labs()
    if not labs:
        print("no labs")
    for info in labs:
        owner = f"pid {info.owner_pid}" if info.owner_pid else "unknown owner"
        state = "live" if info.owner_alive else "STALE"
        print(f"{info.prefix:<12} {state:<5} {owner:<14} {len(info.namespaces)} namespaces, "
              f"age {info.age:.0f} s")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    ok, reason = available()
    if not ok:
        print(f"FAIL: {reason}")
        return 1
    failures = 0

    def report(what: str, passed: bool, seconds: float, detail: str = "") -> None:
        nonlocal failures
        failures += not passed
        line = f"{what:<42} {'ok' if passed else 'FAIL':<4} {seconds * 1000:8.1f} ms"
        print(line + (f"  {detail}" if detail else ""), flush=True)

    total = time.monotonic()
    before = _root_links()
    lab = Lab(args.hosts)
    try:
        t = time.monotonic()
        lab.setup()
        report(f"setup {args.hosts} hosts ({lab.prefix})", True, time.monotonic() - t)
        first, last = lab.hosts[0], lab.hosts[-1]
        report("root namespace untouched while up", _root_links() == before, 0.0)

        t = time.monotonic()
        report(f"ping {first.name} -> {last.name}", first.ping(last, timeout=5),
               time.monotonic() - t)

        t = time.monotonic()
        got = multicast_probe(first, lab.hosts[1:])
        missing = [n for n, v in got.items() if not v]
        report(f"multicast {MDNS_GROUP}:{MDNS_PORT} {first.name} -> others", not missing,
               time.monotonic() - t, f"missing: {', '.join(missing)}" if missing else "")
    except Exception as exc:  # report, then still tear down and verify
        report("unexpected error", False, 0.0, f"{type(exc).__name__}: {exc}")
    finally:
        t = time.monotonic()
        try:
            lab.teardown()
            left = [n for n in _netns_names() if n.startswith(lab.prefix + "-")]
            report("teardown", not left, time.monotonic() - t, " ".join(left))
        except NetlabError as exc:
            report("teardown", False, time.monotonic() - t, str(exc))
        report("root namespace unchanged after", _root_links() == before, 0.0)
    print(f"{'FAIL' if failures else 'OK'} ({time.monotonic() - total:.2f} s total)")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netlab.py",
        description="Multi-host network lab from Linux network namespaces (needs root).")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v info, -vv debug incl. every ip command)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="build a lab and keep it until Ctrl-C or `down`")
    p.add_argument("hosts", type=int, nargs="?", default=3, help="number of hosts (default 3)")
    p.add_argument("--prefix", help="namespace/interface name prefix (default: from pid)")
    p.add_argument("--subnet", help="IPv4 subnet for the hosts (default: 10.231.K.0/24)")
    p.add_argument("--loss", type=float, default=0.0, help="percent of frames every host loses")
    p.add_argument("--delay", help="per-frame delay in ms, LOW-HIGH or one value (e.g. 10-30)")
    p.add_argument("--direction", choices=("both", "egress", "ingress"), default="both",
                   help="which frames the loss and delay apply to (default both)")
    p.add_argument("--seed", type=int, default=1, help="seed of the loss/delay draws")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("down", help="remove labs, including live ones")
    p.add_argument("prefix", nargs="?",
                   help="lab prefix or glob (default: every netlab lab)")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("cleanup", help="remove labs whose owner process is gone")
    p.add_argument("glob", nargs="?", default="*", help="prefix glob (default: *)")
    p.set_defaults(func=_cmd_cleanup)

    p = sub.add_parser("list", help="list netlab labs on this machine")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("check", help="self-test: build a lab, ping, multicast, tear down")
    p.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    p.set_defaults(func=_cmd_check)

    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command in ("up", "down", "cleanup") and os.geteuid() != 0:
        print("error: netlab needs root", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (NetlabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if sys.argv[1:2] == [_RELAY_FLAG]:
        sys.exit(_relay_main(sys.argv[2]))
    sys.exit(main())
