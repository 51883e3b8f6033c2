"""Health probes of every site, run inside the lb namespace (where a real director probes from).

`python -m lab.tm.live.probe CONFIG_JSON` with {"targets": {"A": ["198.18.1.2", 8080]},
"interval_s": 0.25, "timeout_s": 0.5}. One thread per site sends `GET /health` on a new
connection every interval, so a dead site's timeouts never delay the others' verdicts, and
prints one JSON line per probe: {"t": time.monotonic(), "site": "A", "up": true, "detail": ""}.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

_print_lock = threading.Lock()


def probe(address: str, port: int, timeout: float) -> tuple[bool, str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
        return status == 200, "" if status == 200 else f"HTTP {status}"
    except TimeoutError:
        return False, f"no answer in {timeout:g} s"
    except OSError as exc:
        return False, exc.strerror or type(exc).__name__
    except http.client.HTTPException as exc:
        return False, type(exc).__name__
    finally:
        conn.close()


def loop(site: str, address: str, port: int, interval: float, timeout: float) -> None:
    while True:
        started = time.monotonic()
        up, detail = probe(address, port, timeout)
        line = json.dumps({"t": time.monotonic(), "site": site, "up": up, "detail": detail})
        with _print_lock:
            print(line, flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def main() -> None:
    config = json.loads(sys.argv[1])
    for site, (address, port) in config["targets"].items():
        threading.Thread(
            target=loop,
            args=(site, address, int(port), config["interval_s"], config["timeout_s"]),
            daemon=True,
        ).start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
