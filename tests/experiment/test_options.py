"""lab.experiment.options: every trial key reaches the options object of its layer, and the
defaults of the settings are the defaults of each layer."""

from __future__ import annotations

import dataclasses
import json

from lab.backends import BackendOptions
from lab.config.settings import LbSettings, TrialSettings
from lab.experiment.options import backend_options, driver_config, lb_options
from lab.lb.base import LbOptions
from lab.load.http import HttpConfig
from lab.load.oltp import OltpConfig

# lb keys that are not options of an engine: which engine (lb.choose_engine) and the VIP's port
LB_KEYS_NOT_OPTIONS = {"engine", "port"}

EVERY_LB_KEY_SET = LbSettings(
    engine="proxy", port=4000, expire_nodest_conn=1, drain_timeout_s=2.5, conn_reuse_mode=2,
    expire_quiescent_template=1, proxy_timeout_server_s=4.5, proxy_health_check=True,
    proxy_check_inter_s=0.5, proxy_check_fall=2,
)


def test_every_lb_key_reaches_lb_options_under_its_own_name() -> None:
    names = {f.name for f in dataclasses.fields(LbOptions)}
    assert names == set(LbSettings.model_fields) - LB_KEYS_NOT_OPTIONS
    settings = EVERY_LB_KEY_SET
    assert all(getattr(settings, name) != getattr(LbSettings(), name) for name in names)
    options = lb_options(TrialSettings(lb=settings))
    assert {n: getattr(options, n) for n in names} == {n: getattr(settings, n) for n in names}


def test_options_carry_the_ipvs_sysctls() -> None:
    o = lb_options(TrialSettings(lb=LbSettings(engine="ipvs", expire_nodest_conn=1,
                                               conn_reuse_mode=0, expire_quiescent_template=1)))
    assert (o.expire_nodest_conn, o.conn_reuse_mode, o.expire_quiescent_template) == (1, 0, 1)
    assert lb_options(TrialSettings()).conn_reuse_mode is None  # kernel default


def test_default_settings_give_the_default_options() -> None:
    assert lb_options(TrialSettings()) == LbOptions()
    assert backend_options(TrialSettings()) == BackendOptions()


def test_backend_options_take_the_kind_provider_image_and_seed_size() -> None:
    images = {"mariadb": "mariadb:11.4", "nginx": "nginx:1.27"}
    settings = TrialSettings.model_validate({
        "backend": "mariadb", "provider": "docker", "images": images,
        "load": {"tables": 3, "table_size": 500},
    })
    assert backend_options(settings) == BackendOptions(
        kind="mariadb", provider="docker", image="mariadb:11.4", tables=3, table_size=500)
    nginx = TrialSettings.model_validate({"backend": "nginx", "images": images,
                                          "load": {"driver": "http"}})
    assert backend_options(nginx) == BackendOptions(kind="nginx", image="nginx:1.27")


def test_driver_config_names_the_module_and_carries_target_client_and_load() -> None:
    settings = TrialSettings.model_validate({
        "lb": {"port": 3307},
        "client": {"tcp_user_timeout_ms": 9000, "read_timeout_s": 4.0, "tcp_retries2": 5},
        "load": {"driver": "oltp", "threads": 3, "shape": "idle", "idle_s": 2.0},
    })
    cfg = driver_config(settings, "198.18.0.100", {"user": "lab", "database": "sbtest"})
    assert cfg.module == "lab.load.oltp"
    assert cfg.config["target"] == {"host": "198.18.0.100", "port": 3307, "user": "lab",
                                    "database": "sbtest"}
    assert cfg.config["client"] == settings.client.model_dump()
    assert cfg.config["client"]["tcp_user_timeout_ms"] == 9000
    assert cfg.config["load"] == settings.load.model_dump()
    assert cfg.config["load"]["threads"] == 3 and cfg.config["load"]["shape"] == "idle"
    assert set(cfg.config) == {"target", "client", "load"}
    assert json.loads(json.dumps(cfg.config)) == cfg.config  # what the driver's argv carries
    parsed = OltpConfig.model_validate(cfg.config)  # ... and what the driver reads from it
    assert (parsed.target.port, parsed.target.user, parsed.client, parsed.load) == (
        3307, "lab", settings.client, settings.load)


def test_driver_config_follows_the_driver() -> None:
    http = TrialSettings.model_validate({"backend": "nginx", "load": {"driver": "http"}})
    cfg = driver_config(http, "198.18.0.100", {"path": "/"})
    assert cfg.module == "lab.load.http"
    assert cfg.config["target"] == {"host": "198.18.0.100", "port": 3001, "path": "/"}
    assert HttpConfig.model_validate(cfg.config).target.path == "/"
