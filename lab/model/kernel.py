"""The kernel's TCP timers, as pure functions that follow Linux's rules (net/ipv4/tcp_timer.c,
tcp_output.c, kernel/time/timer.c), checked against the real kernel by tests/model/test_kernel.py:

- `tcp_model_timeout`: the tcp_retries2 budget (the famous 924.6 s for 15);
- `retransmission_times`: when the retransmission timer really fires - a tail-loss probe
  first, then RTOs doubling from icsk_rto, each fired late by the timer wheel (`timer_delay`);
- `rto_abort_time` / `user_timeout_abort_time`: when ETIMEDOUT arrives. The budget is
  measured from the first *RTO* retransmission (retrans_stamp; the TLP does not set it) and
  only checked when the timer fires, so tcp_retries2=3 costs ~6.7 s here, not 3.0 s;
  TCP_USER_TIMEOUT replaces the budget and clamps the last timer, so it ends on time;
- `syn_abort_time`: connect() into dropped SYNs (tcp_syn_retries).
The keepalive timer is in lab.model.keepalive: it needs the path its probes travel.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

HZ = 250  # CONFIG_HZ of the lab kernel (6.18.44, /proc/config.gz): one jiffy = 4 ms
TCP_RTO_MIN_S = 0.2  # TCP_RTO_MIN = HZ/5: the tcp_retries2 model's rto_base, always
TCP_RTO_MAX_S = 120.0  # TCP_RTO_MAX = 120*HZ (netns sysctl tcp_rto_max_ms, Linux >= 6.15)
TCP_TIMEOUT_INIT_S = 1.0  # SYN retransmission timer start (TCP_TIMEOUT_INIT)
SYN_LINEAR_TIMEOUTS = 4  # net.ipv4.tcp_syn_linear_timeouts default (Linux >= 6.5)
# Measured on the lab's veth path: tcpi_rto = 204000 us (srtt ~0.15 ms + 200 ms rto_min,
# rounded up to 51 jiffies). `ss -ti` shows it as rto:204.
DEFAULT_RTO_S = 0.204
VETH_RTT_S = 0.00015  # the lab's veth path without added latency (srtt ~0.15 ms)
# Kernel defaults of the keepalive sysctls (include/net/tcp.h) and tcp_retries2 / syn_retries.
KEEPALIVE_TIME_S = 7200
KEEPALIVE_INTVL_S = 75
KEEPALIVE_PROBES = 9
TCP_RETRIES2 = 15
TCP_SYN_RETRIES = 6


def rto_with_latency(latency_ms: float | None, hz: int = HZ) -> float:
    """icsk_rto of an established connection whose RTT grew by latency_ms (netem on the
    client's link): srtt + rttvar, rttvar floored at rto_min, in whole jiffies. Without
    added latency, the RTO measured on the lab's veth path (DEFAULT_RTO_S)."""
    if not latency_ms:
        return DEFAULT_RTO_S
    srtt = latency_ms / 1000 + VETH_RTT_S
    return math.ceil((srtt + TCP_RTO_MIN_S) * hz - 1e-9) / hz


def rto_from_backoffs(gaps: Sequence[float], hz: int = HZ) -> float:
    """icsk_rto as a blackholed segment's RTO retransmissions show it, for `retransmit_plan`.

    gaps[k] is the k-th RTO gap (the first one is measured from the tail-loss probe), i.e.
    `timer_delay(2^k * rto)`: the armed delay plus the wheel's lateness. Each gap gives
    (gap - expected lateness) / 2^k; the median of those, to the nearest jiffy. Dividing the
    raw gaps by 2^k counts the lateness twice once `retransmit_plan` adds it back: in a netem
    50 ms trial under TCG (2026-12-03, gaps 0.293 0.535 1.122 2.270 4.352 8.660 s) that gave
    0.281 s and an abort at 18.64 s for a measured 17.53 s; this gives 0.268 s and 17.61 s.
    """
    if not gaps:
        raise ValueError("no RTO retransmission to take the RTO from")
    per_gap = [(g - _wheel_lateness(jiffies(g, hz)) / hz) / 2**k for k, g in enumerate(gaps)]
    return max(1, round(statistics.median(per_gap) * hz)) / hz


def jiffies(seconds: float, hz: int) -> int:
    """msecs_to_jiffies(): round up to whole jiffies (at least 1)."""
    return max(1, math.ceil(seconds * hz - 1e-9))


def _wheel_lateness(delay_j: int) -> float:
    """Expected jiffies a timer_list fires after its expiry (kernel/time/timer.c).

    calc_wheel_index() puts a timer due `delta` jiffies ahead on level 0 (exact, delta < 63),
    1 (granularity 8 jiffies, delta < 504), 2 (64, < 4032), 3 (512, < 32256), ... and
    calc_index() rounds the expiry *up* to the next bucket of that level, never early: a
    level-0 timer fires 1 jiffy late, a level-n one 1..8^n jiffies late, (8^n+1)/2 on average.
    At HZ=250 that is +4 ms for the 204 ms RTO, +18 ms at 0.4-2 s, +130 ms at 2-16 s and
    +1 s for the 16-129 s timers: it is why a tcp_retries2=15 abort comes ~10 s after 924.6 s.
    """
    level = _wheel_level(delay_j)
    return 1.0 if level == 0 else (8**level + 1) / 2


def _wheel_level(delay_j: int) -> int:
    level, start = 0, 63
    while delay_j >= start:
        level += 1
        start <<= 3
    return level


def _rearmed_lateness(delay_j: int, fired_level: int) -> float:
    """Jiffies late a timer fires when it is re-armed from a timer that fired on `fired_level`.

    A level-n bucket runs at a jiffy that is a multiple of 8^n, so a timer re-armed from it
    on the same or a lower level (n >= 1) lands on a known bucket: it fires exactly
    8^n - delay mod 8^n jiffies late (8^n when that is 0), not the average. The SYN timer
    shows it: 250 jiffies fire 256 later, every time (tcp_syn_retries=1 aborts 3.072 s after
    a connect() that starts on a bucket, measured 7 times in a row in a netns whose peer
    drops the SYNs: 3.072 s each; the average rule says 3.054 s).
    """
    level = _wheel_level(delay_j)
    if level == 0 or level > fired_level:
        return _wheel_lateness(delay_j)
    gran = 8**level
    return float(gran - delay_j % gran)


def timer_delay(delay_s: float, hz: int = HZ, *, wheel: bool = True) -> float:
    """Seconds until a kernel timer armed `delay_s` ahead really fires (wheel=False: ideal)."""
    if not wheel:
        return delay_s
    j = jiffies(delay_s, hz)
    return (j + _wheel_lateness(j)) / hz


def tcp_model_timeout(
    retries: int, rto_min_s: float = TCP_RTO_MIN_S, rto_max_s: float = TCP_RTO_MAX_S
) -> float:
    """The kernel's tcp_model_timeout(): the time budget that tcp_retries2=`retries` stands for.

    "retries exponentially backed-off retransmissions starting at rto_base": doubling up to
    thresh = ilog2(rto_max/rto_base), linear at rto_max after that. The kernel always passes
    rto_base = TCP_RTO_MIN (200 ms) for established sockets, whatever the real RTO is
    (retransmits_timed_out()); since 6.15 rto_max is tcp_rto_max(sk). 15 -> 924.6 s.
    """
    base_ms = round(rto_min_s * 1000)
    max_ms = round(rto_max_s * 1000)
    thresh = (max_ms // base_ms).bit_length() - 1  # ilog2
    if retries <= thresh:
        total_ms = ((2 << retries) - 1) * base_ms
    else:
        total_ms = ((2 << thresh) - 1) * base_ms + (retries - thresh) * max_ms
    return total_ms / 1000


@dataclass(frozen=True)
class RetransmitPlan:
    """What the kernel does with one unacknowledged segment on a dead path.

    sends: instants (s after the original send) the segment leaves: 0 (the original), the
      tail-loss probe, then each RTO retransmission.
    abort_s: when the retransmission timer gives up with ETIMEDOUT.
    deadline_from_s: retrans_stamp, the first RTO retransmission the budget is counted from.
    """

    sends: tuple[float, ...]
    abort_s: float
    deadline_from_s: float


def retransmit_plan(
    rto_s: float,
    *,
    retries2: int = TCP_RETRIES2,
    user_timeout_s: float | None = None,
    rto_min_s: float = TCP_RTO_MIN_S,
    rto_max_s: float = TCP_RTO_MAX_S,
    hz: int = HZ,
    wheel: bool = True,
    max_sends: int | None = None,
) -> RetransmitPlan:
    """Simulate the retransmission timer of one segment that is never ACKed.

    - t=0 the segment is sent and a tail-loss probe is armed: PTO = 2*srtt + rto_min clamped
      to the RTO (tcp_schedule_loss_probe; needs SACK and tcp_early_retrans 3/4, the
      defaults), i.e. ~icsk_rto on a LAN. The probe retransmits the
      segment via __tcp_retransmit_skb, which does not set retrans_stamp nor count a retransmit.
    - the RTO timer is then re-armed icsk_rto after the probe (tcp_send_loss_probe clears
      icsk_pending, tcp_rearm_rto restarts it from now).
    - each RTO firing runs tcp_write_timeout() *before* retransmitting: retransmits_timed_out()
      is false while icsk_retransmits == 0, else it compares now - retrans_stamp with
      tcp_model_timeout(retries2) - or with TCP_USER_TIMEOUT instead when that is set.
      Then tcp_retransmit_skb() (retrans_stamp := now on the first one), icsk_rto doubles up to
      rto_max, and tcp_clamp_rto_to_user_timeout() shortens the next timer to what is left of
      the user timeout (1 jiffy if nothing is).
    Every timer fires late by the timer wheel's granularity (`timer_delay`).
    `max_sends` stops after that many sends (abort_s is then inf if it had not happened).
    """
    if user_timeout_s is not None:
        limit_ms = user_timeout_s * 1000
    else:
        limit_ms = tcp_model_timeout(retries2, rto_min_s, rto_max_s) * 1000
    rto_j = jiffies(rto_s, hz)
    max_j = jiffies(rto_max_s, hz)

    def fire(t: float, delay_j: int) -> float:
        return t + timer_delay(delay_j / hz, hz, wheel=wheel)

    sends = [0.0]
    t = fire(0.0, rto_j)  # tail-loss probe
    sends.append(t)
    t = fire(t, rto_j)  # first RTO
    stamp: float | None = None
    while max_sends is None or len(sends) < max_sends:
        if stamp is not None and (t - stamp) * 1000 >= limit_ms - 1e-6:
            return RetransmitPlan(tuple(sends), t, stamp)
        sends.append(t)
        if stamp is None:
            stamp = t
        rto_j = min(rto_j * 2, max_j)
        delay_j = rto_j
        if user_timeout_s is not None:
            remaining_ms = limit_ms - (t - stamp) * 1000
            delay_j = 1 if remaining_ms <= 0 else min(rto_j, jiffies(remaining_ms / 1000, hz))
        t = fire(t, delay_j)
    return RetransmitPlan(tuple(sends[:max_sends]), math.inf, stamp or 0.0)


def retransmission_times(
    rto_s: float, n: int, rto_max_s: float = TCP_RTO_MAX_S, *, hz: int = HZ, wheel: bool = True
) -> list[float]:
    """The first n retransmission-timer expiries after the original send: the tail-loss probe
    (~icsk_rto), then RTO k at ~2^k * icsk_rto (capped gaps of rto_max), wheel-late."""
    plan = retransmit_plan(
        rto_s, retries2=10**6, rto_max_s=rto_max_s, hz=hz, wheel=wheel, max_sends=n + 1
    )
    return list(plan.sends[1 : n + 1])


# the same keyword set as retransmit_plan, which it calls: the kernel's knobs, spelled out so
# each caller can name the one it turns
def rto_abort_time(
    retries2: int,
    rto_s: float = DEFAULT_RTO_S,
    *,
    user_timeout_s: float | None = None,
    rto_min_s: float = TCP_RTO_MIN_S,
    rto_max_s: float = TCP_RTO_MAX_S,
    hz: int = HZ,
    wheel: bool = True,
) -> float:
    """Seconds from the first unacked send to ETIMEDOUT on a silent path (tcp_write_timeout ->
    retransmits_timed_out -> tcp_write_err): the first RTO firing at which the time since the
    first RTO retransmission reaches tcp_model_timeout(retries2) (or TCP_USER_TIMEOUT)."""
    return retransmit_plan(
        rto_s, retries2=retries2, user_timeout_s=user_timeout_s, rto_min_s=rto_min_s,
        rto_max_s=rto_max_s, hz=hz, wheel=wheel,
    ).abort_s


def user_timeout_abort_time(
    user_timeout_s: float,
    rto_s: float = DEFAULT_RTO_S,
    *,
    rto_max_s: float = TCP_RTO_MAX_S,
    hz: int = HZ,
    wheel: bool = True,
) -> float:
    """Seconds from the first unacked send to ETIMEDOUT with TCP_USER_TIMEOUT set: ~2*rto (TLP,
    then the first RTO retransmission = retrans_stamp) + user_timeout. tcp_retries2 is ignored
    (retransmits_timed_out uses the user timeout *instead of* the model, longer or shorter)."""
    return rto_abort_time(
        TCP_RETRIES2, rto_s, user_timeout_s=user_timeout_s, rto_max_s=rto_max_s, hz=hz,
        wheel=wheel,
    )




def syn_abort_time(
    syn_retries: int = TCP_SYN_RETRIES,
    linear_timeouts: int = SYN_LINEAR_TIMEOUTS,
    *,
    hz: int = HZ,
    wheel: bool = True,
) -> float:
    """Seconds until a blocking connect() fails with ETIMEDOUT when every SYN is dropped.

    The SYN timer starts at TCP_TIMEOUT_INIT (1 s), stays at 1 s for the first
    tcp_syn_linear_timeouts retransmissions, then doubles (tcp_retransmit_timer). At each firing
    tcp_write_timeout() gives up when icsk_retransmits >= syn_retries + linear_timeouts, *or*
    when retransmits_timed_out() finds the time since the original SYN (tcp_connect() sets
    retrans_stamp) >= tcp_model_timeout(syn_retries, rto_base=1 s). Measured here: 1 -> 3.07 s,
    2 -> 7.15 s, 3 -> 19.6 s, 6 -> 133.4 s (PyMySQL's connect_timeout, 10 s, usually wins).
    """
    budget = tcp_model_timeout(syn_retries, TCP_TIMEOUT_INIT_S, TCP_RTO_MAX_S)
    t, rto, sent, fired_level = 0.0, TCP_TIMEOUT_INIT_S, 0, -1  # -1: armed by connect()
    while True:
        j = jiffies(rto, hz)
        # re-armed by the last firing, the timer lands on a known bucket
        t += (j + _rearmed_lateness(j, fired_level)) / hz if wheel else rto
        fired_level = _wheel_level(j)
        if sent >= syn_retries + linear_timeouts or (sent > 0 and t >= budget - 1e-6):
            return t
        sent += 1
        if sent > linear_timeouts:
            rto = min(rto * 2, TCP_RTO_MAX_S)
