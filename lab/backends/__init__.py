"""Backends: real server processes (MariaDB, NGINX) inside backend namespaces."""
