"""The `sysbench` driver: the real `sysbench oltp_read_write` binary, its output parsed.

    BHL_DRIVER_CONFIG=CONFIG_JSON python -m lab.load.sysbench
                                             (started by DriverProcess in the client namespace)

The child runs where this driver runs (the client namespace), so its sockets obey the
client's sysctls. It is started as

    sysbench --config-file=/dev/fd/N oltp_read_write --db-driver=mysql --mysql-host=VIP
        --mysql-port=PORT ... --tables=N --table-size=S --threads=T --time=10000000
        --report-interval=1 --mysql-ignore-errors=all --verbosity=5 run

where fd N is a memfd holding `mysql-password=...` (sysbench 1.0.20's config file: one
`option=value` per line, without the dashes): the password is never on a command line (ps
shows those to every user) nor on a disk (the memfd lives as long as the driver; each
restarted sysbench reads it anew). Its lines become the protocol of lab.load.base:
  * "Threads started!" (every thread connected, statements prepared) -> `ready` (first run)
    and one `connected` event per socket, with the socket options read back from sysbench's
    own sockets (pidfd_getfd + getsockopt: sysbench 1.0.20 sets no TCP_USER_TIMEOUT);
  * each `[ Ns ] thds: .. tps: ..` line (sysbench 1.0.20's --report-interval line) -> `sample`;
  * `DEBUG: Ignoring error 2013 Lost connection ...` (--verbosity=5 prints it when the error
    happens: sysbench's own error line) -> `error`; `DEBUG: Reconnected` -> `reconnect`.

sysbench's reconnect crashes. Debian's 1.0.20 calls mysql_close() and then reuses the freed
MYSQL handle in mysql_real_connect(), which segfaults in libmariadb (akopytov/sysbench#527;
recipe-host-nftables.md §4). So a lost connection ends the process with SIGSEGV about 1 ms
after its error line. The driver then does what the --mysql-ignore-errors=all user wanted:
it starts sysbench again against the VIP at once and stitches the timelines (one clock:
samples are stamped with the time their line arrived). Each crash becomes one `reconnect`
event, "sysbench crashed (SIGSEGV, akopytov/sysbench#527), restarted", stamped when the new
process has its threads connected; the crash's error and reconnect are added to the first
sample of the new process (the crashed process's last partial second is lost with it).
If the error line did not come first, the crash time itself is the `error` event.

With `load.sysbench_reconnect_fix` the driver instead preloads the shim of
recipe-host-nftables.md §4 (lab/load/sbfix/sb_reconnect_fix.c: mysql_init() after every
mysql_close(), the idea of the unmerged PR #528), compiled with gcc on first use into the
lab's cache dir. sysbench then reconnects in-process (its own retry every 1 ms), prints
`DEBUG: Reconnected` (-> `reconnect`) and counts it in reconn/s; nothing is restarted.

Resolution: sysbench reports per second, so `recovered` comes from the first interval with
transactions that lies after the fault (or that contains the reconnect after the fault). Its
time is estimated as the interval start (the later of: the previous report, the restart's
"Threads started!", the reconnect) plus one transaction time (threads / tps), i.e. to a few
ms after a restart but only to +-1 s for an outage that ends inside a running process (e.g.
with a reconnect fix preloaded). The error time has no such limit: it is its line's time.

load.rate (per thread) becomes --rate=rate x threads (sysbench's is the whole run's, a whole
number: the settings refuse a product that is not). sysbench paces by itself: one event
generator feeds all threads a Poisson stream (exponential gaps, not the lab's fixed grid) and
its report adds a "queue length, concurrency" line (logged); its latency includes the time an
event waited in the queue. After a restart its first transaction comes one gap (1 / tps on
average) after the threads started, not one transaction time, and the recovery estimate
below uses that. The fault mark cannot reach sysbench's schedule, so with a rate the first
transaction after the fault also comes a gap late: 1 / (rate x threads) on average, 10 ms at
100/s (the lab's drivers start one at the mark: lab.load.runtime.Pacer).

Not available with sysbench (rejected by the settings): socket options, read/write timeouts
(1.0.20 sets no MYSQL_OPT_*_TIMEOUT) and the idle load shape (--rate is an integer tps).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from lab.config.settings import sysbench_rate
from lab.errors import LabError
from lab.load.foreign import foreign_sockopts, tcp_sockets
from lab.load.oltp import OltpConfig
from lab.load.runtime import (
    FaultMark,
    emit_connected,
    emit_event,
    emit_locked,
    is_stop,
    parse_config,
    start_stdin_reader,
)
from lab.net import runtime as net_runtime
from lab.net.process import find_binary

SAMPLE_RE = re.compile(
    r"^\[ (\d+)s \] thds: (\d+) tps: ([\d.]+) qps: ([\d.]+) \(r/w/o: ([\d.]+)/([\d.]+)/([\d.]+)\)"
    r" lat \(ms,(\d+)%\): ([\d.]+) err/s: ([\d.]+) reconn/s: ([\d.]+)"
)
IGNORED_RE = re.compile(r"^DEBUG: Ignoring error (\d+) (.*?),?\s*$")
RUN_TIME_S = 10_000_000  # --time: "forever"; the trial stops the driver
RESTART_PAUSE_S = 0.02  # between failed starts (e.g. nothing listens on the VIP yet)
STOP_GRACE_S = 1.0
SIGSEGV_CODES = (-signal.SIGSEGV, 128 + signal.SIGSEGV)
CRASH_DETAIL = "sysbench crashed (SIGSEGV, akopytov/sysbench#527), restarted"
LOST_CODES = frozenset({2006, 2011, 2013, 2055})  # the errors sysbench reconnects after
FIX_SOURCE = Path(__file__).with_name("sbfix") / "sb_reconnect_fix.c"
IN_PROCESS_DETAIL = "sysbench reconnected in-process (LD_PRELOAD reconnect fix)"


def sysbench_argv(cfg: OltpConfig, binary: str = "sysbench",
                  config_file: str | None = None) -> list[str]:
    """The sysbench command line for a config (the user's own `sysbench ... run`), without
    the password: that is in `config_file` (see `password_file`)."""
    t, load = cfg.target, cfg.load
    options = [f"--config-file={config_file}"] if config_file else []
    return [
        binary, *options, "oltp_read_write", "--db-driver=mysql",
        f"--mysql-host={t.host}", f"--mysql-port={t.port}", f"--mysql-user={t.user}",
        f"--mysql-db={t.database}",
        f"--tables={load.tables}", f"--table-size={load.table_size}",
        f"--threads={load.threads}", f"--time={RUN_TIME_S}", "--events=0",
        *rate_options(load.rate, load.threads),
        "--report-interval=1", "--mysql-ignore-errors=all", "--verbosity=5", "run",
    ]


def rate_options(rate: float, threads: int) -> list[str]:
    """load.rate (per thread) as sysbench's --rate (the whole run's, a whole number; the
    settings refuse a rate x threads that is not one); none when unlimited."""
    total = sysbench_rate(rate, threads)
    if total is None:
        raise ValueError(f"load.rate {rate:g} x {threads} threads is not a whole --rate")
    return [f"--rate={total}"] if total else []


def password_file(password: str) -> int:
    """A memfd with sysbench's config-file line for the password (close-on-exec: only the
    sysbench it is passed to gets it); read as /dev/fd/N, readable by root only."""
    if "\n" in password:
        raise ValueError("a password with a newline cannot go into sysbench's config file")
    fd = os.memfd_create("sysbench-options")
    os.write(fd, f"mysql-password={password}\n".encode())
    return fd


def parse_sample(line: str) -> dict[str, float] | None:
    """One --report-interval line -> its numbers (None if it is not one)."""
    m = SAMPLE_RE.match(line.strip())
    if not m:
        return None
    keys = ("t_s", "threads", "tps", "qps", "reads", "writes", "other", "percentile",
            "lat_p95_ms", "errors", "reconnects")
    return {k: float(v) for k, v in zip(keys, m.groups(), strict=True)}


def parse_ignored(line: str) -> tuple[int, str] | None:
    """'DEBUG: Ignoring error 2013 Lost connection to server during query, ' -> (2013, msg)."""
    m = IGNORED_RE.match(line.strip())
    return (int(m.group(1)), m.group(2)) if m else None


def crashed(returncode: int) -> bool:
    """Killed by SIGSEGV (Popen: -11; through a shell: 139)."""
    return returncode in SIGSEGV_CODES


def build_reconnect_fix(cache_dir: Path | None = None) -> Path:
    """The compiled shim (cached by the hash of its source; built once, atomically) in
    `cache_dir`, by default the lab's CACHE_DIR (read at call time, so a test can move it)."""
    cache_dir = cache_dir or net_runtime.CACHE_DIR
    source = FIX_SOURCE.read_bytes()
    target = cache_dir / f"sb_reconnect_fix-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.exists():
        return target
    gcc = find_binary("gcc")
    if gcc is None:
        raise LabError("gcc not found (needed for load.sysbench_reconnect_fix)",
                       "run 'make setup' (installs gcc), or leave the fix off")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    try:
        subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp),
                        str(FIX_SOURCE), "-ldl"], check=True, capture_output=True, text=True)
        os.replace(tmp, target)  # concurrent builders produce the same file
    except subprocess.CalledProcessError as exc:
        raise LabError(f"building {FIX_SOURCE.name} failed: {exc.stderr.strip()}",
                       "check gcc and libc6-dev ('make setup')") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --- the driver ------------------------------------------------------------------------------


@dataclass
class Child:
    """One sysbench process (the driver restarts it after a crash)."""

    generation: int
    proc: subprocess.Popen[str]
    spawned_t: float
    started_t: float | None = None  # "Threads started!"
    last_line_t: float | None = None  # the previous report line
    error_line_t: float | None = None  # its last "Ignoring error" line
    sockets: set[int] = field(default_factory=set)


class SysbenchDriver:
    """Runs sysbench, restarts it after crashes, turns its output into protocol records."""

    def __init__(self, cfg: OltpConfig, binary: str, preload: Path | None = None) -> None:
        self.cfg = cfg
        self.binary = binary
        self.env = dict(os.environ)  # without CONFIG_ENV: parse_config took it out
        if preload is not None:
            self.env["LD_PRELOAD"] = str(preload)
        self.password_fd = password_file(cfg.target.password) if cfg.target.password else None
        self.q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.fault = FaultMark()
        self.recovered_generation = 0
        self.child: Child | None = None
        self.generation = 0
        self.t0: float | None = None
        self.peer = f"{cfg.target.host}:{cfg.target.port}"
        self.respawn_at: float | None = None
        # the outage in progress: its errors/reconnects not yet in a sample, its last event
        self.pending_errors = 0
        self.pending_reconnects = 0
        self.restart_reason: str | None = None
        self.failing_since: float | None = None  # first failed start of a restart sequence
        self.last_trouble_t: float | None = None  # last error / reconnect (recovery anchor)
        self.crashes = 0

    # the child process
    def _spawn(self) -> None:
        self.generation += 1
        # pdeathsig: if the driver is SIGKILLed (a trial's last resort), sysbench dies with it
        fds = () if self.password_fd is None else (self.password_fd,)
        config_file = f"/dev/fd/{self.password_fd}" if fds else None
        argv = ["setpriv", "--pdeathsig", "KILL", "--",
                *sysbench_argv(self.cfg, self.binary, config_file)]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, env=self.env,
                                pass_fds=fds)
        self.child = Child(self.generation, proc, time.monotonic())
        threading.Thread(target=self._read, args=(self.child,), daemon=True,
                         name=f"sysbench-{self.generation}").start()

    def _read(self, child: Child) -> None:
        assert child.proc.stdout is not None
        for line in child.proc.stdout:
            self.q.put(("line", (child.generation, time.monotonic(), line.rstrip("\n"))))
        t_eof = time.monotonic()  # the process is gone (the kernel closed its stdout)
        self.q.put(("exit", (child.generation, t_eof, child.proc.wait())))

    def _log(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    # output lines
    def _on_line(self, child: Child, t: float, line: str) -> None:
        self._log(line)
        if line.strip() == "Threads started!":
            self._on_started(child, t)
            return
        sample = parse_sample(line)
        if sample is not None:
            self._on_sample(child, t, sample)
            return
        ignored = parse_ignored(line)
        if ignored is not None:
            code, message = ignored
            child.error_line_t = t
            if code in LOST_CODES:  # sysbench counts these in reconn/s, never in err/s
                self.pending_errors += 1
            self.last_trouble_t = t
            emit_event("error", 0, f"{code} {message} (sysbench's error line)", t)
            return
        if line.strip() == "DEBUG: Reconnected":  # only without the crash (the fix)
            self.last_trouble_t = t
            emit_event("reconnect", 0, IN_PROCESS_DETAIL, t)

    def _on_started(self, child: Child, t: float) -> None:
        child.started_t = t
        child.last_line_t = t
        if self.t0 is None:
            self.t0 = t
            emit_locked({"kind": "ready", "t": t})
        elif self.restart_reason is not None:
            self.pending_reconnects += 1
            self.last_trouble_t = t
            emit_event("reconnect", 0, f"{self.restart_reason}: pid {child.proc.pid} connected "
                       f"{1000 * (t - child.spawned_t):.0f} ms after its start", t)
        self.restart_reason = None
        self.failing_since = None
        self._report_connections(child)

    def _report_connections(self, child: Child) -> None:
        for index, (fd, local, peer) in enumerate(tcp_sockets(child.proc.pid, self.peer)):
            if fd in child.sockets:
                continue
            child.sockets.add(fd)
            emit_connected(index, local, peer, foreign_sockopts(child.proc.pid, fd),
                           pid=child.proc.pid)

    def _on_sample(self, child: Child, t: float, s: dict[str, float]) -> None:
        start = max(t - 1.0, child.last_line_t or t - 1.0)
        child.last_line_t = t
        # sysbench's own err/s and reconn/s, plus what it does not count: lost connections
        # (it counts them as reconnects only) and a crashed process's error and restart
        errors = s["errors"] + self.pending_errors
        reconnects = s["reconnects"] + self.pending_reconnects
        self.pending_errors = 0
        self.pending_reconnects = 0
        record = {
            "kind": "sample", "t": t, "tps": s["tps"], "qps": s["qps"], "reads": s["reads"],
            "writes": s["writes"], "other": s["other"], "lat_p95_ms": s["lat_p95_ms"],
            "errors": round(errors, 2), "reconnects": round(reconnects, 2),
            "threads": int(s["threads"]), "interval_s": 1.0,
        }
        emit_locked(record)
        self._check_recovered(start, t, s["tps"], int(s["threads"]))

    def _check_recovered(self, start: float, end: float, tps: float, threads: int) -> None:
        f = self.fault
        if f.t is None or self.recovered_generation >= f.generation or tps <= 0:
            return
        trouble = self.last_trouble_t if (self.last_trouble_t or 0) >= f.t else None
        if start < f.t and (trouble is None or trouble > end):
            return  # transactions in an interval that began before the fault prove nothing
        anchor = max(start, trouble or start)
        # the first transaction: one transaction time of a busy thread, or at a --rate one
        # gap of its Poisson stream
        t_rec = min(end, anchor + (1 if self.cfg.load.rate else threads) / tps)
        self.recovered_generation = f.generation
        emit_event("recovered", 0,
                   f"first good sysbench interval after the fault: [{start - f.t:+.3f}, "
                   f"{end - f.t:+.3f}] s at {tps:.0f} tps; first transaction estimated "
                   f"{t_rec - f.t:+.3f} s after the fault (1 s report resolution)", t_rec)

    # process exits
    def _on_exit(self, child: Child, t: float, rc: int) -> None:
        if crashed(rc):
            self.crashes += 1
            self._log(f"# sysbench pid {child.proc.pid} crashed (SIGSEGV) at "
                      f"{t - (self.t0 or t):.3f} s; restarting it against {self.peer}")
            if child.error_line_t is None or t - child.error_line_t > 1.0:
                # no error line announced it: the crash is the first sign of the outage
                self.pending_errors += 1
                emit_event("error", 0, "sysbench exited with SIGSEGV in its reconnect path "
                           "(a lost connection; akopytov/sysbench#527)", t)
            self.last_trouble_t = t
            self.restart_reason = CRASH_DETAIL
            self._spawn()
            return
        # a failed start (FATAL: unable to connect), or the run ended: start again
        self._log(f"# sysbench pid {child.proc.pid} exited with code {rc}; restarting")
        if self.failing_since is None and child.started_t is None:
            self.failing_since = t
            self.pending_errors += 1
            emit_event("error", 0, f"sysbench could not start (exit code {rc}) (connect)", t)
        if self.restart_reason is None:
            self.restart_reason = f"sysbench exited with code {rc}, restarted"
        self.respawn_at = t + RESTART_PAUSE_S

    # main loop
    def _command(self, kind: str, value: Any) -> bool:
        """A stdin item; True means stop."""
        if is_stop(kind, value):
            return True
        if kind == "cmd":
            self.fault.take(value, "# sysbench driver")
        return False

    def run(self) -> None:
        start_stdin_reader(self.q)
        self._spawn()
        while True:
            timeout = None
            if self.respawn_at is not None:
                timeout = max(0.0, self.respawn_at - time.monotonic())
            try:
                kind, value = self.q.get(timeout=timeout)
            except queue.Empty:
                self.respawn_at = None
                self._spawn()
                continue
            if kind in ("cmd", "eof"):
                if self._command(kind, value):
                    self._exit()
            else:
                self._on_child(kind, *value)

    def _on_child(self, kind: str, generation: int, t: float, payload: Any) -> None:
        """A line or the exit of sysbench process `generation`, seen at t."""
        child = self.child
        if child is None or generation != child.generation:
            return  # a line or exit of a process already replaced
        if kind == "line":
            self._on_line(child, t, payload)
        elif kind == "exit":
            self._on_exit(child, t, payload)

    def _exit(self) -> NoReturn:
        """Kill sysbench (it may sit in a blackholed read) and leave."""
        try:
            child = self.child
            if child is not None and child.proc.poll() is None:
                child.proc.terminate()
                try:
                    child.proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


def main(argv: list[str]) -> None:
    cfg = parse_config(argv, OltpConfig, "lab.load.sysbench")
    binary = find_binary("sysbench")
    if binary is None:
        sys.stderr.write("sysbench not found: run 'make setup' (installs sysbench)\n")
        sys.exit(2)
    preload = None
    if cfg.load.sysbench_reconnect_fix:
        try:
            preload = build_reconnect_fix()
        except LabError as exc:
            sys.stderr.write(f"{exc}\n")
            sys.exit(2)
    SysbenchDriver(cfg, binary, preload).run()


if __name__ == "__main__":
    main(sys.argv)
