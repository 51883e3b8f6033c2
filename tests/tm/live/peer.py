"""A client for the lb tests, run inside the client namespace.

count VIP PORT N         N new connections, one request each; prints {"A": n, "B": m}
hold VIP PORT1 PORT2     one keep-alive connection to each service, a request on each, prints
                         "ready"; on a line from stdin a request on each again, printing
                         "ok:<site>", "reset" or "timeout" per connection, space-separated
"""

import http.client
import json
import sys
from collections import Counter


def ask(conn: http.client.HTTPConnection) -> str:
    try:
        conn.request("GET", "/work?home=A&plan=free")
        resp = conn.getresponse()
        return f"ok:{resp.read().decode()}"
    except TimeoutError:
        return "timeout"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return f"error:{exc.errno}"


def main() -> None:
    vip = sys.argv[2]
    if sys.argv[1] == "count":
        seen: Counter[str] = Counter()
        for _ in range(int(sys.argv[4])):
            conn = http.client.HTTPConnection(vip, int(sys.argv[3]), timeout=3)
            seen[ask(conn).removeprefix("ok:")] += 1
            conn.close()
        print(json.dumps(seen), flush=True)
        return
    conns = [http.client.HTTPConnection(vip, int(p), timeout=3) for p in sys.argv[3:5]]
    print(" ".join(ask(c) for c in conns), flush=True)
    sys.stdin.readline()
    print(" ".join(ask(c) for c in conns), flush=True)


if __name__ == "__main__":
    main()
