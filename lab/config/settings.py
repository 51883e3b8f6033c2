"""Trial settings: what a scenario file may say, validated with pydantic.

Every setting has one flat dotted key ("client.tcp_retries2", "lb.expire_nodest_conn") so the
same names serve TOML scenario files, `lab run --set key=value` and pytest parameters. Unknown
keys and out-of-range values are rejected with the key named (extra="forbid" everywhere).
None means "the kernel's / library's default": the trial leaves that knob alone.

Types are strict, as TOML gives them: an int field takes only an integer (not true, not "5",
not 5.0), a bool field only true/false (not 1), a float field a finite number (an integer is
fine: deadline_s = 60; inf and nan are not). Every duration has an upper bound, so that a typo
(fault.at_s = 1e9) is refused instead of starting a run that never ends.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from lab.config.stacks import LIBRARY_KEYS, STACK_NAMES, STACKS, refused


def key(default: Any, description: str, unit: str | None = None) -> Any:
    """A setting's default with its one-line description and unit: `lab keys` and the scenario
    JSON Schema read them off the model, so the reference cannot drift from what is accepted."""
    return Field(default, description=description,
                 json_schema_extra={"unit": unit} if unit else None)


class Section(BaseModel):
    # strict: no coercion (true is not 1, "5" is not 5); allow_inf_nan: every float is finite
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _int_only(choices: str) -> BeforeValidator:
    """Literal[0, 1] alone takes true and 1.0 for 1 (they are == 1): refuse them first."""
    def check(value: Any) -> Any:
        if isinstance(value, bool | float):
            raise ValueError(f"not an integer, write {choices}")
        return value
    return BeforeValidator(check)


# integer choices (IPVS sysctls are the integers 0/1/2/3, not true/false or 1.0)
Flag01 = Annotated[Literal[0, 1], _int_only("0 or 1")]
ReuseMode = Annotated[Literal[0, 1, 2, 3], _int_only("0, 1, 2 or 3")]

# Upper bounds of durations, in seconds. A trial observes at most deadline_s (<= a day) after
# the fault, so a timeout, drain or idle time beyond a day can never matter in a trial: it is
# a typo or a unit mistake (ms for s). None (leave the key out) still means "no timeout".
DAY_S = 86_400
HOUR_S = 3_600
Timeout = Annotated[float, Field(gt=0, le=DAY_S)]
MAX_RATE = 100_000  # load.rate, transactions per second per thread


class ClientSettings(Section):
    """Knobs on the client side: sysctls of the client namespace, socket options, app timeouts."""

    # sysctls of the client namespace (per-netns since Linux 4.6)
    tcp_retries2: Annotated[int, Field(ge=1, le=255)] | None = key(
        None, "retransmissions of sent data before the kernel drops the connection "
        "(net.ipv4.tcp_retries2; unset: the kernel's 15, ~925 s)")
    tcp_syn_retries: Annotated[int, Field(ge=1, le=127)] | None = key(
        None, "SYN retransmissions of a new connection (net.ipv4.tcp_syn_retries; unset: 6)")
    tcp_keepalive_time: Annotated[int, Field(ge=1, le=32767)] | None = key(
        None, "idle time before the first keepalive probe (net.ipv4.tcp_keepalive_time; "
        "unset: 7200)", "s")
    tcp_keepalive_intvl: Annotated[int, Field(ge=1, le=32767)] | None = key(
        None, "time between keepalive probes (net.ipv4.tcp_keepalive_intvl; unset: 75)", "s")
    tcp_keepalive_probes: Annotated[int, Field(ge=1, le=127)] | None = key(
        None, "unanswered keepalive probes before the connection is dropped "
        "(net.ipv4.tcp_keepalive_probes; unset: 9)")
    # socket options set on the driver's connections
    tcp_user_timeout_ms: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = key(
        None, "TCP_USER_TIMEOUT on the client's sockets: data unacknowledged this long ends "
        "the connection", "ms")
    so_keepalive: bool | None = key(
        None, "SO_KEEPALIVE on the client's sockets: keepalive probes on idle connections")
    tcp_keepidle: Annotated[int, Field(ge=1, le=32767)] | None = key(
        None, "TCP_KEEPIDLE: idle time before the first keepalive probe, per socket", "s")
    tcp_keepintvl: Annotated[int, Field(ge=1, le=32767)] | None = key(
        None, "TCP_KEEPINTVL: time between keepalive probes, per socket", "s")
    tcp_keepcnt: Annotated[int, Field(ge=1, le=127)] | None = key(
        None, "TCP_KEEPCNT: unanswered keepalive probes before the connection is dropped, "
        "per socket")
    # application timeouts (PyMySQL connect/read/write timeout; JDBC connectTimeout/socketTimeout)
    # (<= a day: a timeout longer than the longest trial never fires; None = no timeout)
    # (a zoo stack's default is its library's own, lab.config.stacks; None there: it has none)
    connect_timeout_s: Timeout | None = key(
        10.0, "the client library's connect timeout (PyMySQL connect_timeout, JDBC "
        "connectTimeout; load.driver zoo: unset is the library's own default)", "s")
    read_timeout_s: Timeout | None = key(
        None, "the client library's read timeout (PyMySQL read_timeout, JDBC socketTimeout; "
        "unset: none)", "s")
    write_timeout_s: Timeout | None = key(
        None, "the client library's write timeout (PyMySQL write_timeout; unset: none)", "s")

    SYSCTLS: ClassVar[tuple[str, ...]] = (
        "tcp_retries2",
        "tcp_syn_retries",
        "tcp_keepalive_time",
        "tcp_keepalive_intvl",
        "tcp_keepalive_probes",
    )

    def sysctls(self) -> dict[str, int]:
        """The namespace sysctls this trial sets, as full sysctl names."""
        out = {}
        for key in self.SYSCTLS:
            value = getattr(self, key)
            if value is not None:
                out[f"net.ipv4.{key}"] = value
        return out


class LbSettings(Section):
    """The load balancer in front of the two backends, and how it treats a removed one."""

    engine: Literal["auto", "nft", "ipvs", "proxy"] = key(
        "auto", "the load balancer: auto (ipvs if the kernel has IP_VS, else nft), nft "
        "(nftables LVS-NAT), ipvs, proxy (HAProxy)")
    port: Annotated[int, Field(ge=1, le=65535)] = key(3001, "the virtual service's port")
    # IPVS semantics: 0 = packets of connections to a removed real server are dropped silently;
    # 1 = the connection is expired and the client gets a reset.
    expire_nodest_conn: Flag01 = key(
        0, "connections to a removed real server: 0 = their packets are dropped silently, "
        "1 = the client gets a reset (IPVS expire_nodest_conn)")
    # connection drain: after a real server is removed, wait this long, then reset what is left
    # (<= a day: a longer drain never resets anything within a trial)
    drain_timeout_s: Annotated[float, Field(ge=0, le=DAY_S)] | None = key(
        None, "drain: reset a removed real server's connections this long after its removal "
        "(unset: never)", "s")
    # engine "ipvs" only (net.ipv4.vs.* in the lb namespace; None = the kernel's default:
    # conn_reuse_mode 1, expire_quiescent_template 0)
    conn_reuse_mode: ReuseMode | None = key(
        None, "engine ipvs only: net.ipv4.vs.conn_reuse_mode in the lb (unset: the kernel's 1)")
    expire_quiescent_template: Flag01 | None = key(
        None, "engine ipvs only: net.ipv4.vs.expire_quiescent_template in the lb (unset: the "
        "kernel's 0)")
    # engine "proxy" only, other engines ignore them (HAProxy, mode tcp).
    # `timeout server`: None = not set, HAProxy then waits forever and only the lb kernel's
    # tcp_retries2 ends a dead session
    # (<= a day, as every timeout)
    proxy_timeout_server_s: Timeout | None = key(
        None, "engine proxy only: HAProxy's timeout server (unset: none, only the lb's kernel "
        "ends a dead session, after ~925 s)", "s")
    # `check inter <proxy_check_inter_s> fall <proxy_check_fall>` + on-marked-down
    # shutdown-sessions: the proxy's own health check closes a dead server's sessions
    proxy_health_check: bool = key(
        False, "engine proxy only: HAProxy health checks that close a dead server's sessions")
    # (<= an hour: checks an hour apart are no health check; HAProxy's default is 2 s)
    proxy_check_inter_s: Annotated[float, Field(gt=0, le=HOUR_S)] = key(
        2.0, "engine proxy only: time between HAProxy's health checks (check inter)", "s")
    proxy_check_fall: Annotated[int, Field(ge=1, le=100)] = key(
        3, "engine proxy only: failed health checks before a server is down (fall)")


class LoadSettings(Section):
    """The client's load: which driver, how many connections, how fast, busy or idle."""

    driver: Literal["oltp", "http", "sysbench", "command", "zoo"] = key(
        "oltp", "the client: oltp (sysbench-like), http (keep-alive, NGINX), "
        "sysbench (1.0.20), command (your program: load.command), zoo (a library)")
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None \
        = key(None, "driver command: your client, an argv list; it finds the "
              "service in LAB_HOST, LAB_PORT, LAB_USER, LAB_PASSWORD, LAB_DATABASE, LAB_URL")
    stack: Literal[*STACK_NAMES] | None = key(  # type: ignore[valid-type]
        None, "driver zoo: the real client library to run ('lab keys --stacks' lists them)")
    threads: Annotated[int, Field(ge=1, le=64)] = key(
        1, "client threads, each with its own long-lived connection")
    tables: Annotated[int, Field(ge=1, le=64)] = key(4, "tables MariaDB is seeded with")
    table_size: Annotated[int, Field(ge=10, le=1_000_000)] = key(1000, "rows in each table")
    # busy: transactions back to back; idle: the connection sits idle `idle_s` between
    # transactions (the fault hits an idle connection, then the app uses it)
    shape: Literal["busy", "idle"] = key(
        "busy", "busy: transactions back to back; idle: the connection idles idle_s between "
        "transactions (the fault hits it idle)")
    # a schedule, not a pause: transaction k of a thread starts at t0 + k / rate, so latency
    # does not lower the rate (lab.load.runtime.Pacer). Pacing leaves the outage's edges as
    # unpaced: a failed transaction is retried at once and the fault mark starts one at once
    # (sysbench paces by itself: its first transaction after the fault or a restart comes
    # one gap of its Poisson stream late, 1 / (rate x threads) on average). Shape busy, oltp,
    # http and sysbench (rate x threads whole); a command or zoo program paces itself.
    # (<= 100000/s: far above what one connection does; beyond it is a typo)
    rate: Annotated[float, Field(ge=0, le=MAX_RATE)] = key(
        0.0, "transactions/s per thread on a schedule, like sysbench's --rate (x threads); 0: "
        "back to back. oltp, http: outages are measured as at 0", "1/s")
    # (<= a day: longer than the kernel's default tcp_keepalive_time of 7200 s, so an idle gap
    # the default keepalive acts in can still be tried; beyond a day it is a unit mistake)
    idle_s: Annotated[float, Field(gt=0, le=DAY_S)] = key(
        5.0, "shape idle: the pause between transactions", "s")
    # sysbench driver only: LD_PRELOAD a shim (mysql_init after mysql_close) so that
    # sysbench 1.0.20 reconnects in-process instead of segfaulting (akopytov/sysbench#527)
    sysbench_reconnect_fix: bool = key(
        False, "driver sysbench only: preload a shim so that sysbench 1.0.20 reconnects "
        "instead of crashing")


def sysbench_rate(rate: float, threads: int) -> int | None:
    """sysbench's --rate (transactions per second of the whole run, an integer) for load.rate
    per thread; None when rate x threads is not a whole number (0: unlimited)."""
    total = rate * threads
    whole = round(total)
    return whole if abs(total - whole) <= 1e-9 * max(1.0, total) else None


class FaultSettings(Section):
    """How the active backend disappears, and when.

    switchover: the LB removes it and adds the other (ipvsadm -d old; -a new);
    crash: it vanishes silently (all its packets dropped, no RST);
    kill: kill -9 of the server (its kernel sends RST / FIN);
    hang: SIGSTOP of the server, `docker pause` of its container (its kernel still ACKs, no
    answer ever comes);
    partition: the path to it fails, `partition_mode` drop (silent) or reject (tcp reset).
    For every kind except switchover the LB also moves new connections to the other backend
    `failover_after_s` after the fault (a health checker's reaction time).
    """

    kind: Literal["switchover", "crash", "kill", "hang", "partition"] = key(
        "switchover", "how the active backend goes: switchover (the lb moves to the other), "
        "crash (silent), kill (-9), hang (stopped), partition")
    # seconds after load start (<= an hour: the load needs seconds to warm up; an hour of load
    # before the fault is more than any trial needs, and 1e9 would be a run that never faults)
    at_s: Annotated[float, Field(gt=0, le=HOUR_S)] = key(
        5.0, "when the fault comes, after the load starts", "s")
    partition_mode: Literal["drop", "reject"] = key(
        "drop", "kind partition: drop (silent) or reject (TCP reset)")
    # (<= an hour: health checkers react in seconds, their slowest settings in minutes)
    failover_after_s: Annotated[float, Field(ge=0, le=HOUR_S)] = key(
        0.0, "every kind but switchover: the lb sends new connections to the other backend "
        "this long after the fault", "s")


# a Docker image reference (name[:tag][@digest]), or "auto"
ImageRef = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")]


class ImageSettings(Section):
    """provider = "docker": the image each backend kind runs.

    "auto" = the lab's local image (`lab image build`, offline) when the engine has it, else
    the official image (`mysql`, `nginx`), which the engine pulls on a machine that can.
    """

    mariadb: ImageRef = key(
        "auto", "provider docker: the MariaDB backend's image (auto: the lab's, else mysql)")
    nginx: ImageRef = key(
        "auto", "provider docker: the NGINX backend's image (auto: the lab's, else nginx)")

    @model_validator(mode="after")
    def _lab_image_current(self) -> ImageSettings:
        """An explicit lab image must be this version's (its tag hashes the build inputs)."""
        for kind in ("mariadb", "nginx"):
            value = getattr(self, kind)
            if value.startswith("blackhole-lab/"):
                try:  # only then: it imports the docker SDK
                    from lab.images.docker import image_ref
                except ImportError as exc:
                    raise ValueError(f"{kind}={value!r} cannot be checked ({exc})") from None
                if value != image_ref():
                    raise ValueError(f"{kind}={value!r} is not this lab version's image; use "
                                     f"'auto' or {image_ref()!r} (made by 'lab image build')")
        return self


class TrialSettings(Section):
    """One trial: everything needed to build, load, break and observe it."""

    # the trial's directory in the run dir: no leading "." (".", "..", hidden files), at most
    # 120 characters (lab.config.scenario also refuses the run dir's own file names)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_,=+-][A-Za-z0-9_.,=+-]{0,119}$")] = key(
        "trial", "the trial's name and directory in the run dir (letters, digits, _ . , = + -)")
    backend: Literal["mariadb", "nginx"] = key("mariadb", "the servers behind the lb")
    # process: the host's server binaries in the backend namespaces; docker: the same servers
    # in containers (lab.backends.docker.container), wired into the same namespaces
    provider: Literal["process", "docker"] = key(
        "process", "how the backends run: host processes, or containers in the same namespaces")
    images: ImageSettings = ImageSettings()
    # client -> lb delay added with netem (the RTT grows by it); needs sch_netem: the lab's
    # VM has it, a host without it refuses the trial (see `lab doctor`)
    latency_ms: Annotated[float, Field(gt=0, le=10_000)] | None = key(
        None, "delay added on the client -> lb link with netem (needs sch_netem: lab doctor)",
        "ms")
    # stop observing this long after the fault if the service has not recovered (<= a day:
    # the slowest outage the lab shows, tcp_retries2 = 15, is ~925 s; a day is ample)
    deadline_s: Annotated[float, Field(gt=0, le=DAY_S)] = key(
        60.0, "stop observing this long after the fault if the service has not recovered", "s")
    # keep the load running this long after recovery (to show qps > 0 after; <= an hour, as
    # seconds show it)
    after_s: Annotated[float, Field(ge=0, le=HOUR_S)] = key(
        3.0, "keep the load running this long after recovery", "s")
    # packet capture + socket/conntrack snapshots (lab.capture); off saves disk on big matrices
    capture: bool = key(
        True, "packet capture and socket/conntrack snapshots (off saves disk on big matrices)")
    client: ClientSettings = ClientSettings()
    lb: LbSettings = LbSettings()
    load: LoadSettings = LoadSettings()
    fault: FaultSettings = FaultSettings()

    # which load drivers speak each backend's protocol
    DRIVERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "mariadb": ("oltp", "sysbench", "command", "zoo"), "nginx": ("http", "command"),
    }
    # what the real sysbench 1.0.20 binary cannot do (it sets no socket option and no
    # MYSQL_OPT_*_TIMEOUT: read back from its sockets with getsockopt; --rate is an integer tps)
    SYSBENCH_UNSUPPORTED: ClassVar[tuple[str, ...]] = (
        "tcp_user_timeout_ms", "so_keepalive", "tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt",
        "read_timeout_s", "write_timeout_s",
    )

    @model_validator(mode="before")
    @classmethod
    def _library_default(cls, data: Any) -> Any:
        """An unset connect timeout is the client's own: 10 s for the lab's drivers (PyMySQL's),
        the library's for a zoo stack, none for a command (the lab cannot set its timeouts)."""
        if not isinstance(data, dict):
            return data
        load, client = data.get("load"), data.get("client", {})
        if not isinstance(load, dict) or not isinstance(client, dict) \
                or "connect_timeout_s" in client:
            return data
        if load.get("driver") == "zoo" and load.get("stack") in STACKS:
            default = STACKS[load["stack"]].connect_timeout_s
        elif load.get("driver") == "command":
            default = None
        else:
            return data
        return {**data, "client": {**client, "connect_timeout_s": default}}

    @model_validator(mode="after")
    def _consistent(self) -> TrialSettings:
        """Reject combinations no part of the lab can run, naming the keys to change."""
        if self.load.driver not in self.DRIVERS[self.backend]:
            raise ValueError(
                f"load.driver={self.load.driver!r} cannot talk to backend={self.backend!r}; "
                f"use load.driver in {self.DRIVERS[self.backend]}")
        self._check_client_program()
        self._check_rate()
        if self.load.driver == "sysbench":
            if self.load.shape != "busy":
                raise ValueError("load.driver='sysbench' supports only load.shape='busy'")
            bad = [k for k in self.SYSBENCH_UNSUPPORTED if getattr(self.client, k) is not None]
            if bad:
                raise ValueError(f"sysbench 1.0.20 cannot apply client.{bad[0]}; use the oltp "
                                 "driver, or the client.tcp_* namespace sysctls")
        return self

    def _check_client_program(self) -> None:
        """load.command and load.stack belong to their drivers; a command's sockets and
        timeouts are its own (the lab can set only the namespace's sysctls for it); a stack
        takes only the keys its library can apply."""
        load = self.load
        if (load.command is not None) != (load.driver == "command"):
            raise ValueError("load.command is the program of load.driver='command' (set both, "
                             "or neither)")
        if (load.stack is not None) != (load.driver == "zoo"):
            raise ValueError("load.stack is the client of load.driver='zoo' (set both, or "
                             "neither); stacks: " + ", ".join(STACK_NAMES))
        if load.driver not in ("command", "zoo"):
            return
        if load.shape != "busy":
            raise ValueError(f"load.driver={load.driver!r} supports only load.shape='busy' "
                             "(the lab cannot see when a program's connection goes idle)")
        if load.driver == "command":
            if load.threads != 1:
                raise ValueError("load.driver='command' runs your program once: it opens its "
                                 "own connections; leave load.threads at 1")
            bad = [k for k in LIBRARY_KEYS if getattr(self.client, k) is not None]
            if bad:
                raise ValueError(f"load.driver='command' cannot apply client.{bad[0]}: your "
                                 "program's sockets and timeouts are its own; set them in it, "
                                 "or use the client.tcp_* namespace sysctls")
            return
        why = refused(load.stack or "", self.client.model_dump())
        if why:
            raise ValueError(why)

    def _check_rate(self) -> None:
        """load.rate paces the lab's own busy drivers; sysbench's --rate is a whole number of
        transactions per second for the whole run."""
        load = self.load
        if load.rate == 0:
            return
        if load.driver in ("command", "zoo"):
            who = "your program" if load.driver == "command" else \
                "a zoo program (LAB_PAUSE_MS after each transaction)"
            raise ValueError(f"load.driver={load.driver!r} cannot apply load.rate: {who} "
                             "paces itself; leave load.rate at 0")
        if load.shape != "busy":
            raise ValueError("load.rate paces load.shape='busy'; load.shape='idle' pauses "
                             "load.idle_s after each transaction instead: leave load.rate at 0")
        if load.driver == "sysbench" and sysbench_rate(load.rate, load.threads) is None:
            raise ValueError("load.driver='sysbench' takes load.rate x load.threads as its "
                             f"--rate, a whole number: {load.rate:g} x {load.threads} = "
                             f"{load.rate * load.threads:g} is not; make it whole")

    def flat(self) -> dict[str, Any]:
        """Every setting as a dotted key (the summary.csv columns)."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    out[f"{key}.{sub}"] = v
            else:
                out[key] = value
        return out
