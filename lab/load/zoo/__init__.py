"""The client zoo: small programs, one per real client stack, that the `zoo` driver runs as
the client (`load.driver = "zoo"`, `load.stack = NAME`).

Each program is a loop of sysbench-like transactions on one long-lived connection that
reconnects as an application would (the contract is in lab/load/zoo/README.md). It is run by
the `command` driver's machinery (lab.load.command), so its outage is measured from the wire
like any user's program; the lab only chooses the argv and translates the client keys into
the LAB_* environment the programs read, which each maps onto its library's own option
(lab.config.stacks says which option).

A Runner knows how to find, build (once, cached by its sources) and start one stack:
lab.load.zoo.jvm (Java), .native (Go, C), .scripted (Node, PHP, Python).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from lab.config.stacks import STACK_NAMES, STACKS
from lab.net import runtime as net_runtime

PAUSE_MS = 10  # between two transactions: a 10 ms recovery resolution at ~1/10 of a core
RECONNECT_PAUSE_MS = 5  # after an error, before the next connect attempt (as lab.load.oltp)


class Runner(Protocol):
    """How one stack is found, built and started."""

    name: str

    def missing(self) -> tuple[str, str] | None:
        """(problem, fix) when this machine cannot run the stack, else None (cheap: no build)."""

    def version(self) -> str | None:
        """The installed library's version ("2.7.6"), or None when it is not installed."""

    def argv(self, cache_dir: Path) -> list[str]:
        """The program's argv, building it into `cache_dir` first if needed (atomic, keyed by
        the hash of its sources)."""


def runners() -> dict[str, Runner]:
    """Every stack's runner, by stack name (imported lazily: a trial needs one)."""
    from lab.load.zoo import jvm, native, scripted
    found: dict[str, Runner] = {**jvm.RUNNERS, **native.RUNNERS, **scripted.RUNNERS}
    assert sorted(found) == sorted(STACK_NAMES), sorted(found)
    return {name: found[name] for name in STACK_NAMES}  # in lab.config.stacks' order


def cache_dir() -> Path:
    """Where the stacks' programs are built (read at call time, so a test can move it)."""
    return net_runtime.CACHE_DIR / "zoo"


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def program_env(stack: str, target: Mapping[str, Any], client: Mapping[str, Any],
                load: Mapping[str, Any], thread: int) -> dict[str, str]:
    """The LAB_* environment of one program: where the service is, and the client keys the
    trial sets (a key left unset is absent, so the library keeps its own default)."""
    env = {
        "LAB_HOST": str(target["host"]), "LAB_PORT": str(target["port"]),
        "LAB_USER": str(target.get("user", "")), "LAB_PASSWORD": str(target.get("password", "")),
        "LAB_DATABASE": str(target.get("database", "")),
        "LAB_TABLES": str(load["tables"]), "LAB_TABLE_SIZE": str(load["table_size"]),
        "LAB_THREAD": str(thread), "LAB_PAUSE_MS": str(PAUSE_MS),
        "LAB_RECONNECT_PAUSE_MS": str(RECONNECT_PAUSE_MS),
    }
    connect = client.get("connect_timeout_s")
    if connect is not None and connect != STACKS[stack].connect_timeout_s:
        env["LAB_CONNECT_TIMEOUT_MS"] = _ms(connect)
    for key, var in (("read_timeout_s", "LAB_READ_TIMEOUT_MS"),
                     ("write_timeout_s", "LAB_WRITE_TIMEOUT_MS")):
        if client.get(key) is not None:
            env[var] = _ms(client[key])
    for key in ("tcp_user_timeout_ms", "tcp_keepidle", "tcp_keepintvl", "tcp_keepcnt"):
        if client.get(key) is not None:
            env[f"LAB_{key.upper()}"] = str(client[key])
    if client.get("so_keepalive") is not None:
        env["LAB_SO_KEEPALIVE"] = "1" if client["so_keepalive"] else "0"
    return env
