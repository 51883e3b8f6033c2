"""Child process: capture one interface with scapy and stream it to a pcap.

Run inside the namespace (`ip netns exec NS python -m lab.capture.scapy_sniff ...`, which is
what `PacketCapture` does through Host.start): scapy enumerates interfaces when it is imported,
so it must be imported by a process that is already in the namespace.

Protocol with the parent (lab.capture.sniffer):
- stdout line `READY` once the AF_PACKET socket with the BPF filter is open and the sniffer
  thread runs (AsyncSniffer's started_callback) -- from then on no matching packet is missed
  unless the kernel drops it;
- stop on a `stop` line or EOF on stdin, or on SIGTERM/SIGINT; the pcap is then closed;
- on stop, the packets still queued on the socket are written (bounded by DRAIN_MAX_S);
- last stdout line: JSON {"packets": written, "received": .., "dropped": .., "backlog_left":
  bool}; received/dropped are the kernel's PACKET_STATISTICS of the socket (dropped = the
  socket buffer overflowed because scapy was too slow).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

PACKET_STATISTICS = 6  # linux/if_packet.h
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module
SOL_PACKET = 263
DLT_EN10MB = 1
DRAIN_MAX_S = 10.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.capture.scapy_sniff")
    p.add_argument("--iface", required=True)
    p.add_argument("--filter", default="", help="BPF filter (tcpdump syntax)")
    p.add_argument("--out", required=True)
    p.add_argument("--snaplen", type=int, default=256)
    p.add_argument("--linktype", type=int, default=DLT_EN10MB)
    p.add_argument("--rcvbuf", type=int, default=4 << 20)
    return p.parse_args(argv)


def _kernel_stats(sock: Any) -> tuple[int | None, int | None]:
    """PACKET_STATISTICS (received, dropped) of scapy's AF_PACKET socket, if readable."""
    try:
        raw = sock.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    except (AttributeError, OSError):
        return None, None
    received, dropped = struct.unpack("II", raw)
    return received, dropped


def _stop_requested() -> threading.Event:
    """Set on a `stop` line or EOF on stdin (the parent died), or on SIGTERM/SIGINT."""
    stop = threading.Event()

    def on_signal(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()  # "stop" or EOF (the parent died)

    threading.Thread(target=read_stdin, daemon=True, name="stdin").start()
    return stop


def _listen(conf: Any, iface: str, bpf: str, rcvbuf: int) -> Any:
    """scapy's AF_PACKET socket on iface with the BPF filter, with a large receive buffer
    (SO_RCVBUFFORCE as root, above the rmem_max cap; SO_RCVBUF otherwise)."""
    sock = conf.L2listen(iface=iface, filter=bpf or None)
    try:
        sock.ins.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except OSError:
        sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return sock


class _Pcap:
    """The output file: packets truncated to snaplen with their capture time, counted.

    Written by the sniffer thread and then by the drain in the main thread, hence the lock.
    """

    def __init__(self, path: str, linktype: int, snaplen: int) -> None:
        from scapy.utils import PcapWriter

        self.snaplen = snaplen
        self.written = 0
        self._lock = threading.Lock()
        self._writer = PcapWriter(path, linktype=linktype, sync=True, snaplen=snaplen)
        self._writer.write_header(None)  # a valid (empty) pcap even if nothing is captured

    def write(self, pkt: Any) -> None:
        raw = bytes(pkt)
        t = float(pkt.time)
        sec = int(t)
        usec = min(999_999, round((t - sec) * 1e6))
        with self._lock:
            self._writer.write_packet(raw[: self.snaplen], sec=sec, usec=usec, wirelen=len(raw))
            self.written += 1

    def close(self) -> None:
        with self._lock:
            self._writer.close()


def _drain(sock: Any, pcap: _Pcap) -> bool:
    """Write what is still queued on the socket; True if a backlog is left after DRAIN_MAX_S.

    AsyncSniffer.stop() ends its loop at once, leaving what is still queued on the socket
    (thousands of packets at high rates).
    """
    deadline = time.monotonic() + DRAIN_MAX_S
    while sock.select([sock], 0):
        if time.monotonic() > deadline:
            return True  # still queued: reported, the parent marks the capture unclean
        pkt = sock.recv()
        if pkt is not None:
            pcap.write(pkt)
    return False


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Imported here, i.e. after `ip netns exec` put us in the namespace.
    from scapy.config import conf
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import AsyncSniffer

    # Dissect only the link layer: the file gets the raw bytes anyway, and skipping IP/TCP
    # dissection is what lets scapy keep up at moderate packet rates.
    conf.layers.filter([Ether])
    stop = _stop_requested()
    sock = _listen(conf, args.iface, args.filter, args.rcvbuf)
    pcap = _Pcap(args.out, args.linktype, args.snaplen)
    sniffer = AsyncSniffer(
        opened_socket=sock,
        prn=pcap.write,
        store=False,
        started_callback=lambda: print("READY", flush=True),
    )
    sniffer.start()
    stop.wait()
    sniffer.stop(join=True)
    backlog_left = _drain(sock, pcap)
    received, dropped = _kernel_stats(sock)
    sock.close()
    pcap.close()
    print(json.dumps({"packets": pcap.written, "received": received, "dropped": dropped,
                      "backlog_left": backlog_left}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
