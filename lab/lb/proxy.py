"""The `proxy` engine: HAProxy in the lb namespace (mode tcp), for "can layer 7 avoid this?".

A proxy is not a packet forwarder: it *terminates* the client's TCP connection on the VIP
and opens its own connection to a backend, copying bytes between the two. So:
- the client's kernel talks only to the proxy's kernel, which ACKs every segment at once:
  whatever happens behind the proxy, the client never retransmits, its tcp_retries2 and
  TCP_USER_TIMEOUT never come into play;
- the server-side connection is the proxy's own socket, governed by the *lb namespace's*
  sysctls (kernel defaults here: tcp_retries2=15) and by HAProxy's `timeout server`;
- when a backend vanishes silently, the proxy's server socket retransmits into the void and
  the client waits until HAProxy gives up on the server side and closes the client's
  connection too. The outage becomes the proxy's server-side timeout.

HAProxy's defaults (what `proxy_timeout_server_s=None` means): `timeout server` not set =
no timeout at all (HAProxy warns "missing timeouts", then waits forever); the session ends
only when the lb kernel aborts the server socket after tcp_retries2 (~925 s with 15), or
when the client gives up. `timeout client` is never set here (clients idle as they like);
`timeout tunnel` is not set either, so in mode tcp `timeout server` is the inactivity limit
that applies. `timeout connect` is fixed at 5 s (every HAProxy sample config has it; unset
it is infinite too). HAProxy sets no SO_KEEPALIVE on either side (option clitcpka/srvtcpka).

LVS-NAT semantics mapped onto HAProxy's runtime API (the stats socket, a unix socket):
- add_real_server: `add server be/NAME ADDR:PORT weight W [check ...]` (dynamic servers start
  in maintenance) + `enable server` (+ `enable health`); re-adding: `set server ... state
  ready` and its weight;
- remove_real_server: `set server be/NAME state drain`: no new sessions; existing ones keep
  flowing, because the proxy can still reach the old backend (a switchover of a live backend
  therefore blackholes nothing here). DRAIN rather than MAINT so that health checks keep
  running on a removed server. expire_nodest_conn=1 adds `shutdown sessions server be/NAME`
  (the client's connection is closed); drain_timeout_s does that after the drain;
- set_weight: `set server be/NAME weight W` (0: no new sessions, existing ones stay);
- switchover: one CLI line (`;`-separated commands run back to back in HAProxy's loop);
- health checks (proxy_health_check): `check inter I fall F rise 2 on-marked-down
  shutdown-sessions`: a TCP connect check; a server marked DOWN gets its sessions closed, the
  only way HAProxy's checks act on connections already established;
- connections(): `show sess` (the proxy's session table; destination = the server).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from lab.config.settings import LbSettings
from lab.errors import LabError
from lab.lb.base import Connection, LbOptions, LoadBalancer, RealServer
from lab.net.process import UNIX_PATH_MAX, ChildProcess, require_binary, tail, wait_until
from lab.net.topology import Host

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_MS = 5000
CHECK_RISE = 2
FRONTEND = "fe"
BACKEND = "be"


def haproxy_binary(path: str | None = None) -> str:
    """haproxy lives in /usr/sbin, often not on a non-login root's PATH."""
    return require_binary("haproxy", "haproxy", path)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class ProxyTuning:
    """The proxy-only settings (lb.proxy_* keys)."""

    timeout_server_s: float | None = None
    health_check: bool = False
    check_inter_s: float = 2.0
    check_fall: int = 3

    @classmethod
    def from_settings(cls, lb: LbSettings | None) -> ProxyTuning:
        if lb is None:
            return cls()
        return cls(lb.proxy_timeout_server_s, lb.proxy_health_check, lb.proxy_check_inter_s,
                   lb.proxy_check_fall)

    def server_args(self) -> str:
        if not self.health_check:
            return ""
        return (f" check inter {_ms(self.check_inter_s)} fall {self.check_fall} rise "
                f"{CHECK_RISE} on-marked-down shutdown-sessions")

    def describe(self) -> str:
        ts = ("timeout server unset (infinite)" if self.timeout_server_s is None
              else f"timeout server {_ms(self.timeout_server_s)}ms")
        hc = (f"check inter {_ms(self.check_inter_s)}ms fall {self.check_fall}"
              if self.health_check else "no health check")
        return f"{ts}, {hc}"


def render_config(vip: ipaddress.IPv4Address, port: int, socket_path: Path,
                  tuning: ProxyTuning) -> str:
    """haproxy.cfg: one TCP frontend on VIP:port, one backend filled at run time."""
    server_timeout = ("" if tuning.timeout_server_s is None
                      else f"    timeout server {_ms(tuning.timeout_server_s)}\n")
    return f"""# generated by lab.lb.proxy ({tuning.describe()})
global
    stats socket {socket_path} mode 600 level admin
    nbthread 1
defaults
    mode tcp
    timeout connect {CONNECT_TIMEOUT_MS}
{server_timeout}frontend {FRONTEND}
    bind {vip}:{port}
    default_backend {BACKEND}
backend {BACKEND}
    balance roundrobin
"""


_SESS_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_show_sess(text: str) -> list[dict[str, str]]:
    """`show sess` lines -> their key=value fields (plus "id"), frontend sessions only."""
    out = []
    for line in text.splitlines():
        head, _, rest = line.partition(": ")
        if not rest:
            continue
        fields = dict(_SESS_FIELD.findall(rest))
        if fields.get("fe") != FRONTEND:
            continue  # e.g. our own CLI connection (fe=GLOBAL)
        fields["id"] = head.strip()
        out.append(fields)
    return out


def _duration_s(text: str) -> float:
    """HAProxy's human durations ('3s', '1m', '250ms', '2h', '' = never) -> seconds."""
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text.strip())
    if not m:
        return -1.0
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return int(m.group(1)) * scale[m.group(2) or "ms"]


@dataclass
class _Server:
    rs: RealServer
    weight: int
    state: str  # "ready" | "drain"


class ProxyLoadBalancer(LoadBalancer):
    """HAProxy (mode tcp) on VIP:port in the lb namespace, driven over its stats socket."""

    engine = "proxy"

    def __init__(self, host: Host, vip: ipaddress.IPv4Address, port: int, options: LbOptions,
                 settings: LbSettings | None = None) -> None:
        super().__init__(host, vip, port, options)
        self.tuning = ProxyTuning.from_settings(settings)
        self.dir = host.workdir / f"haproxy-{port}"
        self.config = self.dir / "haproxy.cfg"
        self.socket_path = self.dir / "admin.sock"
        self.log = self.dir / "haproxy.log"
        self._servers: dict[str, _Server] = {}
        self._lock = threading.Lock()
        self._timers: list[threading.Timer] = []
        self._server: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def describe(self) -> str:
        return f"proxy {self.vip}:{self.port} (HAProxy mode tcp, {self.tuning.describe()})"

    # --- the process -----------------------------------------------------------------------
    def setup(self) -> None:
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            raise LabError(f"unix socket path too long: {self.socket_path}",
                           "use a shorter scratch directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.config.write_text(render_config(self.vip, self.port, self.socket_path, self.tuning))
        # -db: foreground, no daemon; warnings (missing timeouts) go to the log file
        self._server = self.host.start([haproxy_binary(), "-db", "-f", str(self.config)],
                                       self.log)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        assert self._server is not None
        server = self._server
        errors: list[Exception] = []

        def answers() -> bool:
            if not self.socket_path.exists():
                return False
            try:
                return "Name: HAProxy" in self.cli("show info")
            except OSError as exc:
                errors.append(exc)
                return False

        if not wait_until(answers, START_TIMEOUT_S, interval=0.01, alive=server.alive):
            if not server.alive():
                raise RuntimeError(f"haproxy exited with code {server.returncode}; "
                                   f"{self.log}:\n{tail(self.log)}")
            raise RuntimeError(f"haproxy's stats socket did not answer within "
                               f"{START_TIMEOUT_S:.0f}s ({errors[-1] if errors else None}); "
                               f"{self.log}:\n{tail(self.log)}")
        listening = self.host.run(["ss", "-Hltn"]).stdout
        want = f"{self.vip}:{self.port}"
        if not any(want in line.split() for line in listening.splitlines()):
            raise RuntimeError(f"haproxy runs but does not listen on {want}:\n{listening}")

    def cli(self, command: str, timeout: float = 5.0) -> str:
        """One runtime-API request over the stats socket (commands may be ';'-separated)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _do(self, *commands: str) -> None:
        """Run state-changing commands; they answer nothing (or a notice) when they worked."""
        out = self.cli("; ".join(commands)).strip()
        ok = ("", "New server registered.")
        unexpected = [line for line in out.splitlines() if line.strip() and line.strip()
                      not in ok]
        if unexpected:
            raise RuntimeError(f"haproxy refused {'; '.join(commands)!r}: {out}")

    # --- interface ---------------------------------------------------------------------------
    def _ref(self, rs: RealServer) -> str:
        return f"{BACKEND}/{rs.name}"

    def _entry(self, rs: RealServer) -> _Server:
        try:
            return self._servers[rs.name]
        except KeyError:
            raise ValueError(f"{rs} is not a real server of {self.describe()}") from None

    def _add_commands(self, rs: RealServer, weight: int) -> list[str]:
        entry = self._servers.get(rs.name)
        if entry is None:
            # a dynamic server is born in maintenance; the caller enables it
            self._do(f"add server {self._ref(rs)} {rs.address}:{rs.port} weight {weight}"
                     f"{self.tuning.server_args()}")
            self._servers[rs.name] = _Server(rs, weight, "ready")
            cmds = [f"enable server {self._ref(rs)}"]
            if self.tuning.health_check:
                cmds.append(f"enable health {self._ref(rs)}")
            return cmds
        entry.weight, entry.state = weight, "ready"
        return [f"set server {self._ref(rs)} weight {weight}",
                f"set server {self._ref(rs)} state ready"]

    def _remove_commands(self, rs: RealServer) -> list[str]:
        entry = self._entry(rs)
        entry.state = "drain"
        cmds = [f"set server {self._ref(rs)} state drain"]
        if self.options.expire_nodest_conn and self.options.drain_timeout_s is None:
            cmds.append(f"shutdown sessions server {self._ref(rs)}")
        elif self.options.drain_timeout_s is not None:
            timer = threading.Timer(self.options.drain_timeout_s, self._drain_ended, [rs])
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return cmds

    def _drain_ended(self, rs: RealServer) -> None:
        with self._lock:
            if self._entry(rs).state == "drain":
                self._do(f"shutdown sessions server {self._ref(rs)}")

    def add_real_server(self, rs: RealServer, weight: int = 1) -> None:
        with self._lock:
            self._do(*self._add_commands(rs, weight))

    def remove_real_server(self, rs: RealServer) -> None:
        with self._lock:
            self._do(*self._remove_commands(rs))

    def set_weight(self, rs: RealServer, weight: int) -> None:
        with self._lock:
            self._entry(rs).weight = weight
            self._do(f"set server {self._ref(rs)} weight {weight}")

    def switchover(self, old: RealServer, new: RealServer) -> None:
        with self._lock:
            entry = self._servers.get(new.name)
            cmds = self._add_commands(new, entry.weight if entry else 1)
            self._do(*cmds, *self._remove_commands(old))

    def reset_connections(self, rs: RealServer) -> None:
        with self._lock:
            self._entry(rs)
            self._do(f"shutdown sessions server {self._ref(rs)}")

    def connections(self) -> list[Connection]:
        by_name = {s.rs.name: s.rs for s in self._servers.values()}
        conns = []
        for f in parse_show_sess(self.cli("show sess")):
            rs = by_name.get(f.get("srv", ""))
            conns.append(Connection(
                protocol="TCP",
                expire_s=_duration_s(f.get("exp", "")),
                state="ESTABLISHED",  # a session is an accepted client connection
                source=f.get("src", ""),
                virtual=f"{self.vip}:{self.port}",
                destination=f"{rs.address}:{rs.port}" if rs else "",
                real_server=rs.name if rs else None,
            ))
        return conns

    def server_states(self) -> dict[str, dict[str, str]]:
        """`show stat` per server: status (UP/DOWN/DRAIN/MAINT), check status, sessions."""
        lines = self.cli("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",") if lines else []
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row
        return out

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._server is not None:
            self._server.stop(STOP_TIMEOUT_S)  # SIGTERM: a hard stop, closes every session
            self._server = None
