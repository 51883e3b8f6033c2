"""Per-(home site, plan) virtual services on the nft engine, weighted from the shift table.

Weights: a shift fraction is exact (a Fraction) but an nft map slot is an integer, so every
service's weights are scaled to `scale` (1000 by default: 0.1 % steps, finer than any share
a handful of new connections per second can realise, and a map of at most 1000 slots, which
nft loads in milliseconds) with the largest-remainder method, so they always add up to
exactly `scale` and a fraction is off by at most 1/scale.

`WeightedNftLoadBalancer` is the lab's `NftLoadBalancer` with the two choices this use needs
(proposed upstream in the issue-8 report; lab.lb.nft holds the rules, this only picks them):
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
All weights of a service change in one nft transaction (NftLoadBalancer.set_weights).
"""

from __future__ import annotations

from collections.abc import Mapping
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


class WeightedNftLoadBalancer(NftLoadBalancer):
    """NftLoadBalancer with interleaved weighted scheduling and service-scoped nodest rules."""

    interleave_slots = True
    scope_nodest = True
