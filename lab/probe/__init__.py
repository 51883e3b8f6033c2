"""Tiny TCP peers that run *inside* lab namespaces (the model's kernel checks use them).

`tcp_server` answers request lines; `tcp_client` keeps one connection, applies socket options,
and reports every exchange and the final error as JSON lines with CLOCK_MONOTONIC times.
"""
