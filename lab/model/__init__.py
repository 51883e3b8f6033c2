"""Outage predictor: from a trial's settings, when does the client get its service back, and why.

Two layers:

1. Kernel-level pure functions that follow Linux's timer rules (net/ipv4/tcp_timer.c,
   tcp_output.c, kernel/time/timer.c), checked against the real kernel by
   tests/test_model_kernel.py:
   - `tcp_model_timeout`: the tcp_retries2 budget (the famous 924.6 s for 15);
   - `retransmission_times`: when the retransmission timer really fires - a tail-loss probe
     first, then RTOs doubling from icsk_rto, each fired late by the timer wheel;
   - `rto_abort_time` / `user_timeout_abort_time`: when ETIMEDOUT arrives. The budget is
     measured from the first *RTO* retransmission (retrans_stamp; the TLP does not set it) and
     only checked when the timer fires, so tcp_retries2=3 costs ~6.7 s here, not 3.0 s;
     TCP_USER_TIMEOUT replaces the budget and clamps the last timer, so it ends on time;
   - `keepalive_detect_time`, `syn_abort_time`.

2. `predict(trial)`: walks the client's connection through the fault - what happens to each
   packet it sends (delivered, ACKed by a hung server, dropped, reset) as a function of time
   since the fault, which kernel timer or application timeout notices first, and how long the
   reconnect takes (new connections may still land on the dead backend before the LB fails
   over) - and returns a `Prediction`.

Timing conventions (the trial must inject faults this way for the numbers to hold):
- load.shape "busy": a query is outstanding when the fault hits; its send is t=0.
- load.shape "idle": the fault hits `idle_elapsed_s` (default 0: right after a transaction
  completed) into the driver's `idle_s` sleep; the next query goes out at
  t_q = idle_s - idle_elapsed_s. Until then the socket is idle and only keepalive probes leave
  it; an application only *sees* a dead socket when it next uses it, so the earliest
  possible outage of an idle connection is t_q (even without any fault the first transaction
  after the fault starts at t_q).
- outage = fault -> first successful transaction after it = detect_s + reconnect_s, where
  detect_s is when the client's driver gets the error, and reconnect_s covers TCP connect,
  MySQL handshake and the first transaction.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lab.config.settings import TrialSettings

HZ = 250  # CONFIG_HZ of the lab kernel (6.18.44, /proc/config.gz): one jiffy = 4 ms
TCP_RTO_MIN_S = 0.2  # TCP_RTO_MIN = HZ/5: the tcp_retries2 model's rto_base, always
TCP_RTO_MAX_S = 120.0  # TCP_RTO_MAX = 120*HZ (netns sysctl tcp_rto_max_ms, Linux >= 6.15)
TCP_TIMEOUT_INIT_S = 1.0  # SYN retransmission timer start (TCP_TIMEOUT_INIT)
SYN_LINEAR_TIMEOUTS = 4  # net.ipv4.tcp_syn_linear_timeouts default (Linux >= 6.5)
# Measured on the lab's veth path: tcpi_rto = 204000 us (srtt ~0.15 ms + 200 ms rto_min,
# rounded up to 51 jiffies). `ss -ti` shows it as rto:204.
DEFAULT_RTO_S = 0.204
VETH_RTT_S = 0.00015  # the lab's veth path without added latency (srtt ~0.15 ms)
# Reconnect + MySQL handshake + first transaction on a healthy backend (same-host namespaces).
DEFAULT_RECONNECT_S = 0.05
# What a failed connect attempt costs the driver on top of the timeout that ends it. PyMySQL
# 1.2 builds a TLS context (ssl "PREFERRED" by default: load_default_certs, ~30 ms of CPU)
# before every connect: in a netns whose peer drops the SYNs, pymysql.connect(connect_timeout=1)
# fails after 1.034 s (median of 5) where a bare socket with a 1 s timeout fails after 1.001 s;
# cProfile puts 30 ms in SSLContext.set_default_verify_paths. http.client builds nothing.
# The lab's oltp and http drivers then pause RECONNECT_PAUSE_S (5 ms, lab/load/oltp.py) before
# the next attempt; sysbench's mysql_drv_reconnect every 1 ms.
RECONNECT_PAUSE_S = 0.005
CONNECT_ATTEMPT_COST_S = {"oltp": 0.033 + RECONNECT_PAUSE_S, "http": RECONNECT_PAUSE_S,
                          "sysbench": 0.001}
# A follow-up failover "F s after the fault" takes effect this much later: the trial runs it
# after inject() returned, and an nft transaction takes ~10 ms. A busy client's query that is
# outstanding at the fault therefore still reaches the old backend even with F=0.
FAILOVER_LAG_S = 0.01
# Kernel defaults of the keepalive sysctls (include/net/tcp.h) and tcp_retries2 / syn_retries.
KEEPALIVE_TIME_S = 7200
KEEPALIVE_INTVL_S = 75
KEEPALIVE_PROBES = 9
TCP_RETRIES2 = 15
TCP_SYN_RETRIES = 6
# What so_keepalive=None means per load driver: the oltp driver uses PyMySQL, whose connect()
# sets SO_KEEPALIVE=1 (pymysql/connections.py); sysbench's MariaDB Connector/C calls
# ma_pvio_keepalive() after connecting (mariadb_lib.c); http.client/urllib3 leave it off.
# "On" means the netns tcp_keepalive_* sysctls apply (7200/75/9 unless the trial sets them).
DRIVER_SO_KEEPALIVE: dict[str, bool] = {"oltp": True, "sysbench": True, "http": False}
# HAProxy (lb.engine "proxy", lab/lb/proxy.py): `timeout connect 5000`, default `retries 3`.
PROXY_CONNECT_TIMEOUT_S = 5.0

Mechanism = Literal[
    "retries2",  # the kernel gave up retransmitting: tcp_retries2 budget, ETIMEDOUT
    "user_timeout",  # TCP_USER_TIMEOUT expired while retransmitting, ETIMEDOUT
    "read_timeout",  # the driver's socket read timed out (PyMySQL read_timeout)
    "write_timeout",  # sendall() timed out: needs a full send buffer; OLTP never gets there
    "keepalive",  # keepalive probes went unanswered
    "reset",  # the backend's kernel (or a rejecting path) sent a TCP reset / FIN
    "lb_reset",  # the LB reset the old connection (expire_nodest_conn=1)
    "drain_reset",  # the LB reset the old connection at the end of its drain
    "never",  # nothing ever ends it
]


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one trial.

    outage_s: fault -> first successful transaction (None: never, within any horizon; a long
      but finite outage is given as its number, the trial compares it with its deadline).
    mechanism: what ends the outage (what makes the client's connection fail).
    detect_s: fault -> the driver sees its connection error (None: never).
    detail: one human-readable line with the numbers.
    A switchover to a draining LB whose old backend is alive is "drain_reset" with an outage of
    ~0 (only the idle wait): the old connection keeps working; detect_s is then when the
    drain's reset reaches the client (None: never).
    """

    outage_s: float | None
    mechanism: Mechanism
    detect_s: float | None
    detail: str


# --------------------------------------------------------------------------------------------
# Kernel timers
# --------------------------------------------------------------------------------------------


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
    per_gap = [(g - _wheel_lateness(_jiffies(g, hz)) / hz) / 2**k for k, g in enumerate(gaps)]
    return max(1, round(statistics.median(per_gap) * hz)) / hz


def _jiffies(seconds: float, hz: int) -> int:
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
    j = _jiffies(delay_s, hz)
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
    rto_j = _jiffies(rto_s, hz)
    max_j = _jiffies(rto_max_s, hz)

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
            delay_j = 1 if remaining_ms <= 0 else min(rto_j, _jiffies(remaining_ms / 1000, hz))
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


def keepalive_detect_time(
    idle_s: float,
    intvl_s: float,
    probes: int,
    user_timeout_s: float | None = None,
    *,
    hz: int = HZ,
    wheel: bool = True,
) -> float:
    """Seconds from the last received segment to the keepalive abort, peer silent throughout.

    tcp_keepalive_timer(): idle time counts from the last *received* segment; the first probe
    goes out at idle_s, then one every intvl_s. Without a user timeout the socket is reset +
    ETIMEDOUT at the firing that finds `probes` probes unanswered: idle + probes*intvl. With
    TCP_USER_TIMEOUT U the probe count is ignored: abort at the first firing with
    elapsed >= U and at least one probe out (so never before idle + intvl).
    """
    return _keepalive(
        _Keepalive(True, idle_s, intvl_s, probes, user_timeout_s),
        last_rx=0.0, until=math.inf, path=None, hz=hz, wheel=wheel,
    )[0]


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
        j = _jiffies(rto, hz)
        # re-armed by the last firing, the timer lands on a known bucket
        t += (j + _rearmed_lateness(j, fired_level)) / hz if wheel else rto
        fired_level = _wheel_level(j)
        if sent >= syn_retries + linear_timeouts or (sent > 0 and t >= budget - 1e-6):
            return t
        sent += 1
        if sent > linear_timeouts:
            rto = min(rto * 2, TCP_RTO_MAX_S)


# --------------------------------------------------------------------------------------------
# The client's connection through a fault
# --------------------------------------------------------------------------------------------

PathState = Literal["ok", "ack", "drop", "rst"]
ConnFate = Literal["ok", "refused", "syn_drop", "hung"]


@dataclass(frozen=True)
class _Path:
    """What happens to a client->server packet of the old connection sent t s after the fault.

    ok: delivered and answered; ack: ACKed by the server's kernel, never answered (SIGSTOP);
    drop: silently lost; rst: answered with a reset (`cause` says by whom). Before the fault
    everything is ok. `closed_at`: the server's kernel closed the connection itself (kill -9).
    """

    steps: tuple[tuple[float, PathState, Mechanism], ...]
    closed_at: float | None = None

    def at(self, t: float) -> tuple[PathState, Mechanism]:
        state: tuple[PathState, Mechanism] = ("ok", "never")
        for start, s, cause in self.steps:
            if t >= start:
                state = (s, cause)
        return state


@dataclass(frozen=True)
class _Keepalive:
    enabled: bool
    idle_s: float
    intvl_s: float
    probes: int
    user_timeout_s: float | None


def _keepalive(
    ka: _Keepalive,
    *,
    last_rx: float,
    until: float,
    path: _Path | None,
    hz: int = HZ,
    wheel: bool = True,
) -> tuple[float, Mechanism]:
    """Run tcp_keepalive_timer() from `last_rx` until the socket dies or `until` passes.

    Probes that the path answers (ok/ack) restart the idle clock; after an answered probe the
    timer fires intvl later, finds elapsed < idle and re-arms for the rest, so the next probe is
    max(idle, intvl) after the answer. Returns (time, mechanism) or (inf, "never").
    """
    if not ka.enabled:
        return math.inf, "never"
    user_j = _jiffies(ka.user_timeout_s, hz) / hz if ka.user_timeout_s else None
    t = last_rx + timer_delay(ka.idle_s, hz, wheel=wheel)
    out = 0
    for _ in range(100_000):
        if t >= until:
            break
        elapsed = t - last_rx
        if (user_j is not None and elapsed >= user_j - 1e-9 and out > 0) or (
            user_j is None and out >= ka.probes
        ):
            return t, "keepalive"
        state, cause = path.at(t) if path else ("drop", "never")
        if state == "rst":
            return t, cause
        if state in ("ok", "ack"):
            period = timer_delay(max(ka.idle_s, ka.intvl_s), hz, wheel=wheel)
            later = [start for start, _, _ in (path.steps if path else ()) if start > t]
            if not later:
                return math.inf, "never"  # answered for ever
            skip = max(0, math.floor((min(later) - t) / period) - 1)  # jump to the change
            last_rx, out = t + skip * period, 0
            t = last_rx + period
        else:
            out += 1
            t += timer_delay(ka.intvl_s, hz, wheel=wheel)
    return math.inf, "never"


def _fmt(x: float | None) -> str:
    if x is None or math.isinf(x):
        return "never"
    return f"{x:.2f}s"


def predict(
    trial: TrialSettings,
    *,
    rto_s: float = DEFAULT_RTO_S,
    reconnect_s: float = DEFAULT_RECONNECT_S,
    idle_elapsed_s: float = 0.0,
    engine: Literal["nft", "ipvs"] | None = None,
    hz: int = HZ,
) -> Prediction:
    """Predict the outage of `trial` (see the module docstring for the timing conventions).

    rto_s: the connection's icsk_rto (tcpi_rto, `ss -ti` rto:); reconnect_s: connect +
    handshake + first transaction; idle_elapsed_s: idle load only, how far into its sleep the
    driver was when the fault hit; engine: the LVS engine actually used ("auto" in the settings
    is taken as "nft" unless given) - it matters only for partition+drop, where the nft
    emulation's partition rule drops before the LB's own reset rule can answer. lb.engine
    "proxy" (HAProxy) has its own, unverified model (`_predict_proxy`).
    """
    c, lb, fault, load = trial.client, trial.lb, trial.fault, trial.load
    if lb.engine == "proxy":
        return _predict_proxy(trial, rto_s=rto_s, reconnect_s=reconnect_s,
                              idle_elapsed_s=idle_elapsed_s, hz=hz)
    eng = engine or ("ipvs" if lb.engine == "ipvs" else "nft")
    F = fault.failover_after_s
    R = c.read_timeout_s
    U = c.tcp_user_timeout_ms / 1000 if c.tcp_user_timeout_ms else None
    retries2 = c.tcp_retries2 if c.tcp_retries2 is not None else TCP_RETRIES2
    so_ka = c.so_keepalive if c.so_keepalive is not None else DRIVER_SO_KEEPALIVE.get(
        load.driver, True)
    ka = _Keepalive(
        so_ka,
        float(c.tcp_keepidle or c.tcp_keepalive_time or KEEPALIVE_TIME_S),
        float(c.tcp_keepintvl or c.tcp_keepalive_intvl or KEEPALIVE_INTVL_S),
        c.tcp_keepcnt or c.tcp_keepalive_probes or KEEPALIVE_PROBES,
        U,
    )

    # --- the old connection's path, and where a new connection lands, over time -------------
    def lb_removes(at: float, before: PathState) -> list[tuple[float, PathState, Mechanism]]:
        """The LB drops backend1 at `at` (ipvsadm -d): drain / reset / silent drop."""
        if lb.drain_timeout_s is not None:  # existing connections flow on, reset at the end
            return [(at, before, "never"), (at + lb.drain_timeout_s, "rst", "drain_reset")]
        if lb.expire_nodest_conn:
            if eng == "ipvs":
                # real IPVS drops the packet that finds the dest gone and expires the entry
                # (ip_vs_in: NF_DROP while the old conntrack lingers); the next one, a
                # retransmission, has no entry and the director's own stack resets it.
                # Measured in the VM: the reset answers the TLP, ~r0 after the fault.
                return [(at, "drop", "never"), (at + 1e-6, "rst", "lb_reset")]
            return [(at, "rst", "lb_reset")]
        return [(at, "drop", "never")]

    if fault.kind != "switchover":
        F += FAILOVER_LAG_S
    before_failover: ConnFate = "ok"
    closed_at: float | None = None
    steps: list[tuple[float, PathState, Mechanism]]
    if fault.kind == "switchover":
        steps, F = lb_removes(0.0, "ok"), 0.0
        what = "switchover"
    elif fault.kind == "crash" or (fault.kind == "partition" and fault.partition_mode == "drop"):
        steps = [(0.0, "drop", "never")]
        if fault.kind == "crash" or eng == "ipvs":
            steps += lb_removes(F, "drop")
        before_failover = "syn_drop"
        what = f"{fault.kind} (silent)"
    elif fault.kind == "partition":  # reject: the path answers with a TCP reset
        steps, before_failover, what = [(0.0, "rst", "reset")], "refused", "partition (reject)"
    elif fault.kind == "kill":
        steps, closed_at = [(0.0, "rst", "reset")], 0.0
        before_failover, what = "refused", "kill -9 (backend kernel resets)"
    else:  # hang: the backend's kernel ACKs, the server never answers
        steps = [(0.0, "ack", "never"), *lb_removes(F, "ack")]
        before_failover, what = "hung", "hang (SIGSTOP)"
    path = _Path(tuple(steps), closed_at)

    def new_conn(s: float) -> ConnFate:
        return "ok" if s >= F else before_failover

    notes: list[str] = [what]

    # --- the old connection until the driver sees an error -----------------------------------
    busy = load.shape == "busy"
    t_q = 0.0 if busy else max(0.0, load.idle_s - idle_elapsed_s)
    detect, mech = _detect(path, ka, busy, t_q, idle_elapsed_s, R, U, retries2, rto_s, hz, notes)
    if mech == "no_outage":
        # drain with a live backend: the old connection keeps working until the drain ends
        drain = lb.drain_timeout_s or 0.0
        if busy:
            reset_seen = drain
        else:
            reset_seen = t_q + math.ceil(max(0.0, drain - t_q) / load.idle_s) * load.idle_s
        return Prediction(
            t_q, "drain_reset", reset_seen,
            f"{what}: no outage - the draining LB keeps the old connection to the live backend; "
            f"first transaction after the fault at {_fmt(t_q)}; the drain reset at "
            f"{_fmt(drain)} is seen at {_fmt(reset_seen)} (+{reconnect_s:.2f}s reconnect blip)",
        )
    if math.isinf(detect):
        return Prediction(None, "never", None, "; ".join([*notes, "nothing ever ends it"]))

    # --- reconnect: new connections may still land on the dead backend before the failover --
    s = detect
    syn_fail = syn_abort_time(c.tcp_syn_retries or TCP_SYN_RETRIES, hz=hz)
    # sysbench 1.0.20 sets no MYSQL_OPT_CONNECT_TIMEOUT: only the kernel's SYN retries end it
    connect_fail = syn_fail if load.driver == "sysbench" else min(c.connect_timeout_s, syn_fail)
    attempt_s = CONNECT_ATTEMPT_COST_S[load.driver]
    failed: list[str] = []
    for _ in range(100_000):
        fate = new_conn(s)
        if fate == "ok":
            break
        if fate == "refused":  # RST at once: the driver retries until the failover
            failed.append("refused")
            s = F
        elif fate == "syn_drop":
            failed.append(f"SYN dropped, {connect_fail:g}s + {attempt_s:.3f}s client")
            s += connect_fail + attempt_s
        elif R is None:  # hung backend: the handshake completes, the greeting never comes
            notes.append("the reconnect lands on the hung backend and waits forever")
            return Prediction(None, "never", detect, "; ".join(notes))
        else:
            failed.append(f"hung backend, read_timeout {R:g}s + {attempt_s:.3f}s client")
            s += R + attempt_s
    if failed:
        notes.append(
            f"{len(failed)} reconnect(s) before the failover at {_fmt(F)} fail ({failed[0]})"
        )
    outage = s + reconnect_s
    notes.append(f"error at {_fmt(detect)}, reconnect +{reconnect_s:.2f}s -> {_fmt(outage)}")
    assert mech != "no_outage"
    return Prediction(outage, mech, detect, "; ".join(notes))


def _detect(
    path: _Path,
    ka: _Keepalive,
    busy: bool,
    t_q: float,
    idle_elapsed_s: float,
    R: float | None,
    U: float | None,
    retries2: int,
    rto_s: float,
    hz: int,
    notes: list[str],
) -> tuple[float, Mechanism | Literal["no_outage"]]:
    """When does the driver get an error on its old connection, and what causes it."""
    # idle phase: only keepalive probes (or the server's own FIN/RST) can reach the kernel
    if not busy:
        if path.closed_at is not None and path.closed_at <= t_q:
            notes.append(f"server closed at {_fmt(path.closed_at)}, seen at next query")
            return t_q, "reset"
        t_dead, why = _keepalive(ka, last_rx=-idle_elapsed_s, until=t_q, path=path, hz=hz)
        if t_dead <= t_q:
            notes.append(f"idle socket killed by {why} at {_fmt(t_dead)}, seen at next query")
            return t_q, why
        notes.append(f"idle until the next query at {_fmt(t_q)}")
    elif path.closed_at is not None:
        notes.append("server's kernel resets the busy connection at once")
        return t_q, "reset"

    state, cause = path.at(t_q)
    if state == "ok":
        return t_q, "no_outage"
    if state == "rst":
        notes.append(f"query at {_fmt(t_q)} answered with a reset")
        return t_q, cause
    candidates: list[tuple[float, Mechanism]] = []
    if R is not None:
        candidates.append((t_q + R, "read_timeout"))
    if state == "ack":
        # ACKed: nothing in flight, so no retransmission timer and no user timeout; keepalive
        # runs again from the ACK, and helps only once the LB stops the packets reaching it.
        notes.append("query ACKed by the backend's kernel, never answered")
        t_ka, why = _keepalive(ka, last_rx=t_q, until=math.inf, path=path, hz=hz)
        candidates.append((t_ka, why))
    else:
        # dropped: the retransmission timer owns the socket (keepalive is suspended while
        # packets_out, tcp_keepalive_timer); an LB reset answers the first send after it starts
        plan = retransmit_plan(rto_s, retries2=retries2, user_timeout_s=U, hz=hz)
        who: Mechanism = "user_timeout" if U is not None else "retries2"
        budget = f"TCP_USER_TIMEOUT {U:g}s" if U is not None else (
            f"tcp_retries2={retries2} (model {tcp_model_timeout(retries2):g}s)"
        )
        notes.append(
            f"query at {_fmt(t_q)} blackholed: {budget} counted from the first RTO "
            f"retransmission (+{plan.deadline_from_s:.2f}s), abort at +{plan.abort_s:.2f}s"
        )
        candidates.append((t_q + plan.abort_s, who))
        for send in plan.sends[1:]:
            s_state, s_cause = path.at(t_q + send)
            if s_state == "rst":
                candidates.append((t_q + send, s_cause))
                notes.append(f"retransmission at {_fmt(t_q + send)} is reset ({s_cause})")
                break
    t, why = min(candidates, key=lambda x: x[0])
    return t, why


def _predict_proxy(
    trial: TrialSettings, *, rto_s: float, reconnect_s: float, idle_elapsed_s: float, hz: int
) -> Prediction:
    """lb.engine "proxy" (HAProxy, mode tcp): the proxy terminates the client's connection.

    DERIVED from lab/lb/proxy.py and HAProxy's documentation; NOT checked against a run yet.
    The proxy's kernel ACKs and answers everything the client sends, so the client's
    tcp_retries2, TCP_USER_TIMEOUT and keepalive never fire; only its read timeout does. The
    client's connection ends when HAProxy closes it, which happens when its server-side session
    ends: the server's RST (kill / reject), `timeout server` (inactivity, counted here from the
    forwarded query), the lb namespace's tcp_retries2 (kernel default 15) on a silent path, a
    health check marking the server DOWN (`fall` failed checks `inter` apart, ~inter/2 to the
    first one; silent failures take a whole `inter` each) with shutdown-sessions, or the LB's
    `shutdown sessions` (expire_nodest_conn=1 at removal, drain_timeout_s after it). Removal
    alone (drain state) keeps sessions on the old server. Reconnects succeed once the failover
    sends new sessions to backend2 (the trial adds backend2 only then, so a DOWN mark alone does
    not help new sessions); HAProxy's connect timeouts/retries before that can add a few
    seconds that are not modelled.
    """
    c, lb, fault, load = trial.client, trial.lb, trial.fault, trial.load
    busy = load.shape == "busy"
    t_q = 0.0 if busy else max(0.0, load.idle_s - idle_elapsed_s)
    kind = fault.kind if fault.kind != "partition" else f"partition-{fault.partition_mode}"
    F = 0.0 if kind == "switchover" else fault.failover_after_s + FAILOVER_LAG_S
    silent = kind in ("crash", "partition-drop")
    refusing = kind in ("kill", "partition-reject")
    closes: list[tuple[float, Mechanism, str]] = []
    if refusing:
        closes.append((0.0, "reset", "backend path resets the proxy's server side"))
    if silent:
        closes.append((t_q + rto_abort_time(TCP_RETRIES2, rto_s, hz=hz), "retries2",
                       "lb kernel gives up the server side (tcp_retries2=15)"))
    if lb.proxy_timeout_server_s is not None and kind != "switchover":
        closes.append((t_q + lb.proxy_timeout_server_s, "read_timeout",
                       f"HAProxy timeout server {lb.proxy_timeout_server_s:g}s"))
    down_t = math.inf
    if lb.proxy_health_check and (silent or refusing):
        inter = lb.proxy_check_inter_s
        down_t = inter / 2 + (lb.proxy_check_fall - (0 if silent else 1)) * inter
        closes.append((down_t, "lb_reset", f"health check DOWN after ~{down_t:.1f}s, "
                       "shutdown-sessions"))
    if kind != "switchover" or lb.drain_timeout_s is not None or lb.expire_nodest_conn:
        if lb.drain_timeout_s is not None:
            closes.append((F + lb.drain_timeout_s, "drain_reset", "shutdown sessions after drain"))
        elif lb.expire_nodest_conn:
            closes.append((F, "lb_reset", "shutdown sessions at removal"))
    close_t, mech, why = min(closes, key=lambda x: x[0], default=(math.inf, "never", ""))
    if kind == "switchover" and mech != "lb_reset":
        # the old backend is alive and sessions keep flowing to it
        seen: float | None = None
        if not math.isinf(close_t):
            seen = close_t if busy else (
                t_q + math.ceil(max(0.0, close_t - t_q) / load.idle_s) * load.idle_s)
        return Prediction(
            t_q, "drain_reset", seen,
            f"proxy, switchover: no outage - sessions stay on the live old backend ({why or 'no'}"
            " close)")
    detect, notes = max(close_t, t_q), [f"proxy ({kind}): {why}" if why else f"proxy ({kind})"]
    if kind not in ("kill", "partition-reject") and c.read_timeout_s is not None and (
        t_q + c.read_timeout_s < detect
    ):
        detect, mech = t_q + c.read_timeout_s, "read_timeout"
        notes.append(f"client read timeout {c.read_timeout_s:g}s")
    if math.isinf(detect):
        return Prediction(None, "never", None, "; ".join([*notes, "nothing ever ends it"]))
    ready = F  # backend2 only joins at the failover (the trial adds backend1 alone)
    start = max(detect, ready)
    if kind == "hang" and detect < ready:
        waits = [x for x in (c.read_timeout_s, lb.proxy_timeout_server_s) if x is not None]
        if not waits:
            notes.append("the reconnect lands on the hung backend and waits forever")
            return Prediction(None, "never", detect, "; ".join(notes))
        start = detect + math.ceil((ready - detect) / min(waits)) * min(waits)
        notes.append(f"reconnects before the failover hang, each ends after {min(waits):g}s")
    outage = start + reconnect_s
    notes.append(f"client error at {_fmt(detect)}, new sessions go to backend2 from "
                 f"{_fmt(ready)} -> {_fmt(outage)} (HAProxy connect retries not modelled)")
    return Prediction(outage, mech, detect, "; ".join(notes))


def describe(p: Prediction) -> str:
    """One line for reports."""
    return f"{_fmt(p.outage_s)} via {p.mechanism} (detect {_fmt(p.detect_s)}): {p.detail}"


__all__: list[str] = [
    "DEFAULT_RECONNECT_S",
    "DEFAULT_RTO_S",
    "HZ",
    "Mechanism",
    "Prediction",
    "RetransmitPlan",
    "describe",
    "keepalive_detect_time",
    "predict",
    "retransmission_times",
    "retransmit_plan",
    "rto_abort_time",
    "syn_abort_time",
    "tcp_model_timeout",
    "timer_delay",
    "user_timeout_abort_time",
]
