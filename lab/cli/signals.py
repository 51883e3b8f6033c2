"""How a lab stops: the same on SIGINT and SIGTERM (and SIGHUP, unless nohup ignores it),
whether it runs in a terminal, in the background of a script or under CI.

Python keeps SIGINT ignored when it starts ignored, which a shell does to `cmd &` without job
control: such a lab used to run on through Ctrl-C/`kill -INT`. Here every stop signal is
installed explicitly. The first one raises KeyboardInterrupt in the main thread, which stops
every trial and tears down what each built; later ones only say that the teardown is under
way, since interrupting the teardown itself would leave namespaces and servers behind.

During start-up (the imports) a stop signal is only noted, and acted on once they are done
(`arm`): a KeyboardInterrupt raised half-way through importing a C extension left the
interpreter to crash on its way out (seen in CI: "Fatal Python error: PyThreadState_Get",
exit -6, and an exit by SIGINT instead of 130).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state = {"stopping": False, "fork_hook": False, "armed": False, "pending": False}


def _on_stop(signum: int, frame: FrameType | None) -> None:
    if not _state["armed"]:
        _state["pending"] = True  # start-up: arm() stops the lab once the imports are done
        return
    if _state["stopping"]:
        # os.write, not print: a signal handler may run inside a print of the main thread
        os.write(2, b"lab: already stopping, tearing down what the run built "
                    b"(if it hangs: kill -9, then 'lab clean')\n")
        return
    _state["stopping"] = True
    raise KeyboardInterrupt


def _plain_signals_in_forked_child() -> None:
    """A forked helper (pyroute2 forks one per IPRoute(netns=...) and ends it with SIGTERM)
    must die of SIGTERM, not raise KeyboardInterrupt into a copy of the lab's threads, where
    it would hang for ever and its parent with it; and it leaves Ctrl-C to the parent, which
    tears everything down and stops its helpers."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def install() -> None:
    """Catch every stop signal; until `arm`, one is only noted (see the module docstring)."""
    _state.update(stopping=False, armed=False, pending=False)
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup: the user asked the lab to outlive the terminal
        signal.signal(sig, _on_stop)
    if not _state["fork_hook"]:
        os.register_at_fork(after_in_child=_plain_signals_in_forked_child)
        _state["fork_hook"] = True


def arm() -> None:
    """Start-up is over: a stop signal now raises KeyboardInterrupt, and one that came
    during start-up does so at once."""
    _state["armed"] = True
    if _state["pending"]:
        _state["stopping"] = True
        raise KeyboardInterrupt


def settle() -> None:
    """The command is done: a signal from now on (while the interpreter exits, joining
    threads) has nothing left to stop and must not print a traceback."""
    _state["stopping"] = True
