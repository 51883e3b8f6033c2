"""The keepalive timer (tcp_keepalive_timer) of an idle or ACKed connection, run against the
path its probes travel: answered probes restart the idle clock, a reset ends it at once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lab.config.settings import ClientSettings
from lab.model.kernel import (
    HZ,
    KEEPALIVE_INTVL_S,
    KEEPALIVE_PROBES,
    KEEPALIVE_TIME_S,
    jiffies,
    timer_delay,
)
from lab.model.path import Path
from lab.model.prediction import Mechanism

# What so_keepalive=None means per load driver: the oltp driver uses PyMySQL, whose connect()
# sets SO_KEEPALIVE=1 (pymysql/connections.py); sysbench's MariaDB Connector/C calls
# ma_pvio_keepalive() after connecting (mariadb_lib.c); http.client/urllib3 leave it off.
# "On" means the netns tcp_keepalive_* sysctls apply (7200/75/9 unless the trial sets them).
DRIVER_SO_KEEPALIVE: dict[str, bool] = {"oltp": True, "sysbench": True, "http": False}


@dataclass(frozen=True)
class Keepalive:
    """The keepalive settings one socket ends up with (socket options over netns sysctls)."""

    enabled: bool
    idle_s: float
    intvl_s: float
    probes: int
    user_timeout_s: float | None

    @classmethod
    def of(cls, client: ClientSettings, driver: str, user_timeout_s: float | None) -> Keepalive:
        """The driver's socket: SO_KEEPALIVE as the driver sets it unless the trial does;
        TCP_KEEPIDLE/INTVL/CNT over the tcp_keepalive_* sysctls over the kernel defaults."""
        enabled = client.so_keepalive if client.so_keepalive is not None else (
            DRIVER_SO_KEEPALIVE.get(driver, True))
        return cls(
            enabled,
            float(client.tcp_keepidle or client.tcp_keepalive_time or KEEPALIVE_TIME_S),
            float(client.tcp_keepintvl or client.tcp_keepalive_intvl or KEEPALIVE_INTVL_S),
            client.tcp_keepcnt or client.tcp_keepalive_probes or KEEPALIVE_PROBES,
            user_timeout_s,
        )


def keepalive_timer(
    ka: Keepalive,
    *,
    last_rx: float,
    until: float,
    path: Path | None,
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
    user_j = jiffies(ka.user_timeout_s, hz) / hz if ka.user_timeout_s else None
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
    return keepalive_timer(
        Keepalive(True, idle_s, intvl_s, probes, user_timeout_s),
        last_rx=0.0, until=math.inf, path=None, hz=hz, wheel=wheel,
    )[0]

