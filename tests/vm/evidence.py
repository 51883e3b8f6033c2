"""Readers of a VM trial's evidence shared by the host side (test_vm) and the guest side
(test_ipvs): not tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lab import model
from lab.config.settings import TrialSettings


def timer_part(trial_dir: Path) -> float:
    """First blackholed send -> ETIMEDOUT: the kernel's timers alone. Fault -> first lost send
    varies under TCG (0.05 s on ipvs, 0.69 s on nft in one run of 2026-12-02), and the reconnect
    after the error from 0.5 to 3.3 s, so neither belongs in a check of the timers."""
    record = json.loads((trial_dir / "trial.json").read_text())
    with open(trial_dir / "events.csv") as f:
        error = next(float(r["t_s"]) for r in csv.DictReader(f) if r["event"] == "first_error")
    return error - float(record["evidence"]["bh.first_lost_t_s"])


def kernel_part(trial_dir: Path) -> tuple[float, float, float]:
    """First unacked send -> ETIMEDOUT, measured and as the model has it (rto_abort_time) with
    the RTO the capture's backoffs show; and that RTO. Fault -> first lost send is the lb's
    and the emulation's part (ipvsadm takes ~0.14 s under TCG), printed by the callers."""
    record = json.loads((trial_dir / "trial.json").read_text())
    settings = TrialSettings.model_validate(record["settings"])
    with open(trial_dir / "retransmits.csv") as f:
        gaps = [float(r["gap_s"]) for r in csv.DictReader(f) if r["kind"] == "rto"]
    rto = model.rto_from_backoffs(gaps)
    assert settings.client.tcp_retries2 is not None
    predicted = model.rto_abort_time(settings.client.tcp_retries2, rto)
    return timer_part(trial_dir), predicted, rto
