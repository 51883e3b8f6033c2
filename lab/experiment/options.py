"""Settings -> the options object each layer takes: the one place a trial's keys are mapped.

The layers below know nothing of TrialSettings: lab.lb gets LbOptions, lab.backends gets
BackendOptions, a load driver gets its DriverConfig. A new key reaches its layer here.
"""

from __future__ import annotations

from collections.abc import Mapping

from lab.backends import BackendOptions
from lab.config.settings import TrialSettings
from lab.lb.base import LbOptions
from lab.load import DriverConfig
from lab.load import driver_config as make_driver_config


def lb_options(settings: TrialSettings) -> LbOptions:
    """The lb.* keys every engine honours, the IPVS sysctls and HAProxy's proxy_* keys."""
    lb = settings.lb
    return LbOptions(
        expire_nodest_conn=lb.expire_nodest_conn,
        drain_timeout_s=lb.drain_timeout_s,
        conn_reuse_mode=lb.conn_reuse_mode,
        expire_quiescent_template=lb.expire_quiescent_template,
        proxy_timeout_server_s=lb.proxy_timeout_server_s,
        proxy_health_check=lb.proxy_health_check,
        proxy_check_inter_s=lb.proxy_check_inter_s,
        proxy_check_fall=lb.proxy_check_fall,
    )


def backend_options(settings: TrialSettings) -> BackendOptions:
    """The server kind, where it runs, its image (images.<kind>) and MariaDB's seed size."""
    return BackendOptions(
        kind=settings.backend,
        provider=settings.provider,
        image=getattr(settings.images, settings.backend),
        tables=settings.load.tables,
        table_size=settings.load.table_size,
    )


def driver_config(settings: TrialSettings, host: str, target_params: Mapping[str, str]
                  ) -> DriverConfig:
    """load.driver's config for the virtual service host:lb.port, with the client.* and load.*
    sections as they are; target_params: the backend's (Backend.client_params(): with the
    run's password, which is why DriverProcess passes the config in the environment)."""
    params = dict(target_params)
    if settings.load.driver in ("command", "zoo"):  # the wire observer reads this protocol
        params["protocol"] = "mysql" if settings.backend == "mariadb" else "http"
    return make_driver_config(settings.load.driver, host, settings.lb.port, params,
                              settings.client.model_dump(), settings.load.model_dump())
