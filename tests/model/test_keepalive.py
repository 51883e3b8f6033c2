"""The keepalive timer (lab.model.keepalive): a silent peer, and which drivers turn it on."""

from __future__ import annotations

import pytest

from lab import model
from lab.config.settings import ClientSettings, LoadSettings, TrialSettings
from tests.model.cases import trial


def test_keepalive_detect_time() -> None:
    assert model.keepalive_detect_time(2, 1, 3, wheel=False) == 5.0
    assert model.keepalive_detect_time(2, 1, 3) == pytest.approx(5.07, abs=0.02)
    # TCP_USER_TIMEOUT replaces the probe count: first firing with elapsed >= U
    assert model.keepalive_detect_time(2, 1, 9, 3.5, wheel=False) == 4.0
    # ... but at least one probe must be out: never before idle + intvl
    assert model.keepalive_detect_time(10, 5, 9, 1.0, wheel=False) == 15.0
    assert model.keepalive_detect_time(7200, 75, 9, wheel=False) == 7875.0


def test_keepalive_default_follows_the_driver() -> None:
    """so_keepalive=None: PyMySQL and libmariadb switch SO_KEEPALIVE on, http.client does not,
    so short netns keepalive sysctls only rescue the database drivers' idle connections."""
    ka = {"tcp_keepalive_time": 1, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 1}
    oltp = model.predict(trial(ka, load={"shape": "idle"}))
    http = model.predict(TrialSettings(
        backend="nginx", client=ClientSettings(**ka),
        load=LoadSettings(shape="idle", driver="http"),
    ))
    assert (oltp.mechanism, http.mechanism) == ("keepalive", "retries2")
