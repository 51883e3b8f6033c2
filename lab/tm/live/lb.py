"""Per-(home site, plan) virtual services on the nft engine, weighted from the shift table.

Weights: a shift fraction is exact (a Fraction) but an nft map slot is an integer, so every
service's weights are scaled to `scale` (1000 by default: 0.1 % steps, finer than any share
a handful of new connections per second can realise, and a map of at most 1000 slots, which
nft loads in milliseconds) with the largest-remainder method, so they always add up to
exactly `scale` and a fraction is off by at most 1/scale.

`WeightedNftLoadBalancer` is the lab's `NftLoadBalancer` with three changes this use needs
(proposed upstream in the issue-8 report):
* the scheduling map is interleaved (smooth weighted round robin) instead of one contiguous
  range per server: with contiguous ranges and `numgen inc`, weights 850/150 send the first
  850 new connections of every cycle to the first server (and the counter restarts at 0
  whenever the chain is rewritten), so at a few new connections per second a 15 % shift
  would not reach its destination for minutes. Interleaved, any run of consecutive new
  connections is split in proportion (+-1), from the first connection after a change on;
  `numgen random` would be right only on average, and at a few connections per second a
  share realised per second would swing by tens of percent.
* the nodest rules (drop / reset of a removed server's connections) also match the
  service's original destination (VIP:port): marks are numbered per service, so without it a
  reset in one service would also reset another service's connections with the same mark.
* `set_weights` changes all weights of a service in one nft transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

from lab.lb.nft import NftLoadBalancer


def integer_weights(fractions: Mapping[str, Fraction], scale: int) -> dict[str, int]:
    """Integers summing to `scale`, each within 1 of fraction * scale (largest remainder)."""
    total = sum(fractions.values(), Fraction(0))
    if total <= 0:
        return dict.fromkeys(fractions, 0)
    exact = {name: f * scale / total for name, f in fractions.items()}
    out = {name: int(x) for name, x in exact.items()}  # floor: fractions are >= 0
    left = scale - sum(out.values())
    by_remainder = sorted(exact, key=lambda n: (-(exact[n] - out[n]), n))
    for name in by_remainder[:left]:
        out[name] += 1
    return out


def interleave(weights: Sequence[tuple[int, int]]) -> list[int]:
    """Smooth weighted round robin (nginx's, IPVS wrr's aim): one slot per unit of weight,
    spread so that any run of consecutive slots holds each server in proportion, +-1."""
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


class WeightedNftLoadBalancer(NftLoadBalancer):
    """NftLoadBalancer with random weighted scheduling and service-scoped nodest rules."""

    def _scheduling_rules(self) -> list[str]:
        active = [e for e in self._entries.values() if e.state == "active" and e.weight > 0]
        if not active:
            return []  # nothing to schedule to: the VIP answers with RST, as with IPVS
        order = interleave([(e.mark, e.weight) for e in active])
        slots, start = [], 0
        for i in range(1, len(order) + 1):
            if i == len(order) or order[i] != order[start]:
                key = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
                slots.append(f"{key} : {order[start]:#x}")
                start = i
        rules = [f"ct mark set numgen inc mod {len(order)} map {{ {', '.join(slots)} }}"]
        rules += [
            f"ct mark {e.mark:#x} meta l4proto tcp dnat to {e.rs.address}:{e.rs.port}"
            for e in active
        ]
        return rules

    def _forward_rules(self) -> list[str]:
        rules = []
        for e in self._entries.values():
            match = (
                f"ct mark {e.mark:#x} ct direction original meta l4proto tcp "
                f"ct original ip daddr {self.vip} ct original proto-dst {self.port}"
            )
            if e.state == "reset" or (e.state == "removed" and self.options.expire_nodest_conn):
                rules.append(f"{match} counter reject with tcp reset")
            elif e.state == "removed":
                rules.append(f"{match} counter drop")
        return rules

    def set_weights(self, weights: Mapping[str, int]) -> None:
        """Set the weight of each named real server, in one transaction."""
        with self._lock:
            for name, weight in weights.items():
                entry = self._entries.get(name)
                if entry is None:
                    raise ValueError(f"{name} is not a real server of {self.describe()}")
                entry.weight = weight
            self._apply()

    def weights(self) -> dict[str, int]:
        return {name: e.weight for name, e in self._entries.items()}
