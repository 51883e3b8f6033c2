"""What the old connection's path does to a client packet, as a function of time since the fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lab.model.prediction import Mechanism

PathState = Literal["ok", "ack", "drop", "rst"]


@dataclass(frozen=True)
class Path:
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
