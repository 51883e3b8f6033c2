"""The `nft` engine: LVS-NAT emulated with nftables NAT and conntrack marks, for kernels
without IP_VS (DNAT on a conntrack mark, measured on this project's kernel 6.18 hosts).

How IPVS maps onto netfilter here:
- scheduling: the nat/prerouting chain sees only the first packet of a connection; it picks a
  real server by weighted round robin (`numgen inc mod W`), stores its id in the conntrack mark
  and DNATs to it. The mark ties every later packet of the connection to its real server,
  like `cp->dest` in IPVS.
- a removed real server: a filter/forward rule matches its mark in the original
  (client->server) direction and drops (expire_nodest_conn=0: IPVS NF_DROPs in ip_vs_in) or
  answers with a TCP reset (expire_nodest_conn=1). The reply direction is left alone, as in
  IPVS, which still forwards server->client in ip_vs_out.
- re-adding a removed server removes the rule: its old connections resume, as in IPVS.
Every change rewrites the service's chains in one nft transaction, so a switchover is
atomic. The rules are nft's own language (what a user would type), applied in-process through
libnftables (Host.nft, lab.net.netfilter): pyroute2's nftables module has no NAT expression
helpers, and forking `nft -f` per change took up to seconds with 64 trials on two cores.

Two choices differ for the traffic manager's weighted services (lab.tm.live.lb), so they are
class attributes a subclass sets rather than rules it rewrites: `interleave_slots` (the map's
slots in smooth weighted round robin instead of one range per server) and `scope_nodest` (the
nodest rules also match the service's VIP:port, so that with one table per service and marks
numbered per service a reset in one service spares another's connections of the same mark).
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lab.lb.base import Connection, LbOptions, LoadBalancer, RealServer
from lab.net.conntrack import ConntrackTable, CtEntry
from lab.net.topology import Host

TABLE_PREFIX = "bhl_lvs_"  # one table per virtual service: bhl_lvs_<port>


@dataclass
class _Entry:
    rs: RealServer
    mark: int
    weight: int
    state: str  # "active" | "removed" | "draining" | "reset"


def interleave(weights: Sequence[tuple[int, int]]) -> list[int]:
    """Smooth weighted round robin (nginx's, IPVS wrr's aim) of (mark, weight) pairs: one slot
    per unit of weight, spread so that any run of consecutive slots holds each server in
    proportion, +-1."""
    total = sum(w for _, w in weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for i, (_, w) in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: current[i])  # first of the best
        current[best] -= total
        out.append(weights[best][0])
    return out


def slot_map(order: Sequence[int]) -> str:
    """Marks in slot order as an nft map body, a run of equal marks as one range:
    [1, 1, 2] -> '0-1 : 0x1, 2 : 0x2'."""
    slots, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or order[i] != order[start]:
            key = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            slots.append(f"{key} : {order[start]:#x}")
            start = i
    return ", ".join(slots)


class NftLoadBalancer(LoadBalancer):
    engine = "nft"
    # False: one contiguous range of slots per server, as IPVS wrr cycles; True: interleaved
    interleave_slots = False
    # False: a nodest rule matches a mark in any service of the namespace (as upstream has it)
    scope_nodest = False

    def __init__(
        self, host: Host, vip: ipaddress.IPv4Address, port: int, options: LbOptions
    ) -> None:
        super().__init__(host, vip, port, options)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self.table = f"{TABLE_PREFIX}{port}"

    # --- ruleset -------------------------------------------------------------------------
    def _slot_order(self, active: list[_Entry]) -> list[int]:
        if self.interleave_slots:
            return interleave([(e.mark, e.weight) for e in active])
        return [e.mark for e in active for _ in range(e.weight)]

    def _scheduling_rules(self) -> list[str]:
        active = [e for e in self._entries.values() if e.state == "active" and e.weight > 0]
        if not active:
            return []  # nothing to schedule to: the VIP itself answers with RST, as with IPVS
        order = self._slot_order(active)
        rules = [f"ct mark set numgen inc mod {len(order)} map {{ {slot_map(order)} }}"]
        for e in active:
            rules.append(
                f"ct mark {e.mark:#x} meta l4proto tcp dnat to {e.rs.address}:{e.rs.port}"
            )
        return rules

    def _forward_rules(self) -> list[str]:
        # scoped, the match needs tcp for proto-dst; unscoped, only the reset does
        scope = (f" meta l4proto tcp ct original ip daddr {self.vip} "
                 f"ct original proto-dst {self.port}") if self.scope_nodest else ""
        tcp = "" if self.scope_nodest else " meta l4proto tcp"
        rules = []
        for e in self._entries.values():
            match = f"ct mark {e.mark:#x} ct direction original{scope}"
            if e.state == "reset" or (e.state == "removed" and self.options.expire_nodest_conn):
                rules.append(f"{match}{tcp} counter reject with tcp reset")
            elif e.state == "removed":
                rules.append(f"{match} counter drop")
        return rules

    def _apply(self) -> None:
        lines = [f"flush chain ip {self.table} svc"]
        lines += [f"add rule ip {self.table} svc {r}" for r in self._scheduling_rules()]
        lines.append(f"flush chain ip {self.table} nodest")
        lines += [f"add rule ip {self.table} nodest {r}" for r in self._forward_rules()]
        self.host.nft("\n".join(lines) + "\n")

    # --- interface -------------------------------------------------------------------------
    def setup(self) -> None:
        ruleset = f"""
table ip {self.table} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {self.vip} tcp dport {self.port} jump svc
    }}
    chain svc {{
    }}
    chain filter_forward {{
        type filter hook forward priority filter; policy accept;
        jump nodest
    }}
    chain nodest {{
    }}
}}
"""
        self.host.nft(ruleset)

    def _entry(self, rs: RealServer) -> _Entry:
        try:
            return self._entries[rs.name]
        except KeyError:
            raise ValueError(f"{rs} is not a real server of {self.describe()}") from None

    def add_real_server(self, rs: RealServer, weight: int = 1) -> None:
        with self._lock:
            self._add(rs, weight)
            self._apply()

    def _add(self, rs: RealServer, weight: int) -> None:
        entry = self._entries.get(rs.name)
        if entry is None:
            self._entries[rs.name] = _Entry(rs, len(self._entries) + 1, weight, "active")
        else:  # re-added: its surviving connections resume (IPVS reuses the trashed dest)
            entry.weight, entry.state = weight, "active"

    def remove_real_server(self, rs: RealServer) -> None:
        with self._lock:
            self._remove(rs)
            self._apply()

    def _remove(self, rs: RealServer) -> None:
        entry = self._entry(rs)
        if self.options.drain_timeout_s is None:
            entry.state = "removed"
            return
        # drain: existing connections keep flowing, no new ones; reset them at the timeout
        entry.state = "draining"
        timer = threading.Timer(self.options.drain_timeout_s, self.reset_connections, [rs])
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def set_weight(self, rs: RealServer, weight: int) -> None:
        with self._lock:
            self._entry(rs).weight = weight
            self._apply()

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set the weight of each named real server in one nft transaction (a shift moves
        every server's share at once); an unknown name changes nothing."""
        with self._lock:
            for name in weights:
                if name not in self._entries:
                    raise ValueError(f"{name} is not a real server of {self.describe()}")
            for name, weight in weights.items():
                self._entries[name].weight = weight
            self._apply()

    def weights(self) -> dict[str, int]:
        """Each real server's weight by name, in the order they were added (a removed one
        keeps its weight for when it is added back)."""
        with self._lock:
            return {name: e.weight for name, e in self._entries.items()}

    def switchover(self, old: RealServer, new: RealServer) -> None:
        with self._lock:
            self._remove(old)
            self._add(new, self._entries[new.name].weight if new.name in self._entries else 1)
            self._apply()

    def reset_connections(self, rs: RealServer) -> None:
        with self._lock:
            entry = self._entry(rs)
            if entry.state in ("draining", "removed"):
                entry.state = "reset"
                self._apply()

    def connections(self) -> list[Connection]:
        """The namespace's conntrack entries to this service (ctnetlink, lab.net.conntrack),
        each with the real server its mark names."""
        by_mark = {e.mark: e.rs.name for e in self._entries.values()}
        with ConntrackTable(self.host.ns) as table:
            entries = table.dump()
        return [connection(e, by_mark) for e in entries
                if e.orig.dst == str(self.vip) and e.orig.dport == self.port]

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        with contextlib.suppress(RuntimeError):  # already gone (with its namespace)
            self.host.nft(f"delete table ip {self.table}")


def connection(entry: CtEntry, marks: dict[int, str]) -> Connection:
    """A TCP conntrack entry -> Connection (the reply source is the real server)."""
    o, r = entry.orig, entry.reply
    return Connection(
        protocol="TCP", expire_s=float(entry.timeout_s), state=entry.state,
        source=f"{o.src}:{o.sport}", virtual=f"{o.dst}:{o.dport}",
        destination=f"{r.src}:{r.sport}", real_server=marks.get(entry.mark),
    )
