"""nftables changes in a lab namespace, in-process through libnftables: no process per change.

A fault is an nft change (a switchover rewrites the lb's chains, a crash or partition adds a
drop table), and its instant must not depend on how busy the machine is. Forking `ip netns
exec <ns> nft -f -` costs a process start, a mount namespace, and nft's own start-up: about
a millisecond on a quiet machine, but a median 1.07 s and up to 4.4 s with 64 trials' drivers
saturating two cores (issue 15's measurement). libnftables' Python binding (Debian's
python3-nftables, the nftables project's own; it is not on PyPI, so `make setup` links it
into the venv) runs the same nft language in this process.

Why one context per namespace, opened in that namespace: libnftables opens its netlink
socket when the context is created (nft_ctx_new), and a netlink socket belongs to the
namespace its creator was in when it was made, for its whole life. So the context is made in
a thread that has entered the namespace (topology.in_netns), and afterwards any thread may
use it: measured here (tests/net/test_netfilter.py) a change made from a host-namespace thread
lands in the lab namespace and never in the host's. The socket holds a reference on the
namespace: `close()` must run before the namespace is removed (Host.close does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lab.errors import LabError

T = TypeVar("T")

FIX = "run 'make setup': it installs python3-nftables and links it into .venv"

# when the last change this thread made was in place (last_applied)
_applied = threading.local()


def last_applied() -> float | None:
    """When the last nft change made by this thread was in place (time.monotonic()), or None
    since forget_applied(): a fault's `fault_apply_ms` ends here, not after the Python that
    follows the change (describing it, the binding fetching nft's output), which under 64
    trials' GIL contention took up to 57 ms on its own (bench_scale.py --trials 64)."""
    return getattr(_applied, "t", None)


def forget_applied() -> None:
    _applied.t = None


def binding() -> Any:
    try:
        import nftables  # Debian's python3-nftables (ctypes over libnftables.so.1)
    except ImportError:
        raise LabError("libnftables' Python binding (module nftables) is missing", FIX) from None
    return nftables


class NftContext:
    """One libnftables context bound to namespace `ns`; `apply` runs nft text atomically
    (a script is one netlink batch: all of it or none of it)."""

    def __init__(self, ns: str, enter: Callable[[str, Callable[[], Any]], Any]) -> None:
        """`enter(ns, fn)` runs fn inside the namespace (topology.in_netns)."""
        module = binding()
        self.ns = ns
        self._lock = threading.Lock()  # a context is not thread-safe

        def make() -> Any:
            ctx = module.Nftables()
            ctx.set_handle_output(False)
            return ctx

        self._ctx: Any = enter(ns, make)

    def apply(self, script: str, who: str = "") -> str:
        """Run an nft script (the `nft -f` language); its output, or RuntimeError with nft's
        own error text."""
        with self._lock:
            if self._ctx is None:
                raise RuntimeError(f"nft context of {self.ns} is closed")
            rc, out, err = self._run(script)
        if rc != 0:
            raise RuntimeError(f"[{who or self.ns}] nft failed: {err.strip() or out.strip()}")
        return str(out)

    def _run(self, script: str) -> tuple[int, str, str]:
        """The binding's cmd(), stamped as soon as nft_run_cmd_from_buffer returns: cmd() then
        makes two more ctypes calls for the output buffers, each giving up the GIL and waiting
        to get it back behind the other trials' threads."""
        ctx = self._ctx
        rc = ctx.nft_run_cmd_from_buffer(ctx._Nftables__ctx, script.encode())  # cmd()'s own call
        _applied.t = time.monotonic()
        out = ctx.nft_ctx_get_output_buffer(ctx._Nftables__ctx).decode()
        err = ctx.nft_ctx_get_error_buffer(ctx._Nftables__ctx).decode()
        return int(rc), out, err

    def close(self) -> None:
        """Free the context and its socket (and the namespace reference it holds)."""
        with self._lock:
            self._ctx = None  # the binding's __del__ calls nft_ctx_free
