"""Parsers of ss / conntrack / nstat / tcpdump text, on lines captured in the lab (kernel
6.18, iproute2 6.1, conntrack-tools 1.4.7, tcpdump 4.99.3), and the capture tool choice."""

from __future__ import annotations

import pytest

from lab.capture import kernel_counters, sniffer
from lab.capture.conntrack import LbConnection, parse_conntrack_line, parse_conntrack_output
from lab.capture.sockets import parse_ss_duration, parse_ss_line, parse_ss_output
from lab.errors import LabError

# `ss -tnoiHO state all dst VIP:7000` in the client netns, blackholed connection,
# tcp_retries2=5: before the drop, 0.5 s into it, while backed off, and the final expiry.
SS_BEFORE = (
    "ESTAB 0      0      198.18.0.1:39344 198.18.0.100:7000 ts sack bbr wscale:10,10 rto:204 "
    "rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 cwnd:16 bytes_sent:60 "
    "bytes_acked:61 bytes_received:60 segs_out:14 segs_in:8 data_segs_out:6 data_segs_in:6 "
    "bbr:(bw:1053090592bps,mrtt:0.011,pacing_gain:2.88672,cwnd_gain:2.88672) send "
    "1314496454bps lastsnd:12 lastrcv:12 lastack:12 pacing_rate 3009576600bps delivery_rate "
    "1053090904bps delivered:7 app_limited rcv_space:14480 rcv_ssthresh:64088 minrtt:0.011 "
    "snd_wnd:65536"
)
SS_FIRST_RTO = (
    "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,352ms,1) ts sack bbr "
    "wscale:10,10 rto:408 backoff:1 rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:1 bytes_sent:90 bytes_retrans:20 bytes_acked:61 bytes_received:60 "
    "segs_out:17 segs_in:8 data_segs_out:9 data_segs_in:6 bbr:(bw:1053090592bps,mrtt:0.011,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 82156028bps lastsnd:56 lastrcv:572 "
    "lastack:572 pacing_rate 3009576600bps delivery_rate 1053090904bps delivered:7 "
    "app_limited busy:472ms unacked:1 retrans:1/2 lost:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.011 snd_wnd:65536"
)
SS_BACKED_OFF = (
    "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,6.100ms,5) ts sack bbr "
    "wscale:10,10 rto:6528 backoff:5 rtt:0.141/0.062 ato:40 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:1 bytes_sent:130 bytes_retrans:60 bytes_acked:61 bytes_received:60 "
    "segs_out:21 segs_in:8 data_segs_out:13 data_segs_in:6 bbr:(bw:1053090592bps,mrtt:0.011,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 82156028bps lastsnd:428 lastrcv:7192 "
    "lastack:7192 pacing_rate 3009576600bps delivery_rate 1053090904bps delivered:7 "
    "app_limited busy:7092ms unacked:1 retrans:1/6 lost:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.011 snd_wnd:65536"
)
SS_DUE = "ESTAB 0      10     198.18.0.1:39344 198.18.0.100:7000 timer:(on,,5) ts sack bbr rto:6528 backoff:5 unacked:1 retrans:1/6 lost:1"  # noqa: E501 (abridged after the timer)
# Without -O ss prints the info on a second, tab-indented line (a TIME-WAIT-like socket gets a
# line of blanks); keepalive, timewait, persist (zero window) and SYN-SENT timers.
SS_TWO_LINES = (
    "ESTAB      0      0      198.18.0.1:54778 198.18.0.100:7000 timer:(keepalive,28sec,0)\n"
    "\t ts sack bbr wscale:10,10 rto:204 rtt:0.302/0.151 mss:1448 pmtu:1500 rcvmss:536 "
    "advmss:1448 cwnd:10 bytes_acked:1 segs_out:2 segs_in:1 bbr:(bw:0bps,mrtt:0.302,"
    "pacing_gain:1,cwnd_gain:1) send 383576159bps lastsnd:1520 lastrcv:1520 lastack:1520 "
    "pacing_rate 1096201840bps delivered:1 app_limited rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:0.302 snd_wnd:65160\n"
    "FIN-WAIT-2 0      0      198.18.0.1:54784 198.18.0.100:7000 timer:(timewait,58sec,0)\n"
    "\t" + " " * 60 + "\n"
    "ESTAB      0      32600  198.18.0.1:54796 198.18.0.100:7000 timer:(persist,088ms,1)\n"
    "\t ts sack bbr wscale:10,10 rto:212 backoff:2 rtt:10.089/17.477 mss:1448 pmtu:1500 "
    "rcvmss:536 advmss:1448 cwnd:101 bytes_sent:129208 bytes_retrans:704 bytes_acked:128505 "
    "segs_out:95 segs_in:8 data_segs_out:91 bbr:(bw:3697020832bps,mrtt:0.047,"
    "pacing_gain:2.88672,cwnd_gain:2.88672) send 115966300bps lastsnd:1452 lastrcv:1516 "
    "lastack:1212 pacing_rate 10565536768bps delivery_rate 2633920bps delivered:92 "
    "busy:1516ms rwnd_limited:1472ms(97.1%) retrans:0/1 dsack_dups:1 rcv_space:14480 "
    "rcv_ssthresh:64088 notsent:32600 minrtt:0.047\n"
    "SYN-SENT 0      1      198.18.0.1:52282 198.18.0.100:7000 timer:(on,540ms,1)\n"
    "\t bbr rto:1000 mss:524 pmtu:1500 rcvmss:88 advmss:1460 cwnd:1 segs_out:2 "
    "bbr:(bw:0bps,mrtt:0) lastsnd:1173388 lastrcv:1173388 lastack:1173388 app_limited "
    "unacked:1 retrans:1/1 lost:1 rcv_ssthresh:64240\n"
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("352ms", 0.352), ("024ms", 0.024), ("1.304ms", 1.304), ("6.100ms", 6.1), ("28sec", 28),
    ("58sec", 58), ("1min2sec", 62), ("1min", 60), ("12min", 720), ("", 0.0),
])
def test_ss_duration(text: str, seconds: float) -> None:
    assert parse_ss_duration(text) == pytest.approx(seconds)


def test_ss_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_ss_duration("soon")


def test_ss_before_the_outage_has_no_timer() -> None:
    s = parse_ss_line(SS_BEFORE)
    assert (s.state, s.local, s.peer, s.send_q) == ("ESTAB", "198.18.0.1:39344",
                                                    "198.18.0.100:7000", 0)
    assert s.timer is None and s.retrans == 0 and s.rto_ms == 204 and s.bytes_acked == 61
    assert s.netstat() == "off (0.00/0/0)"


def test_ss_rto_timer_like_netstat_on() -> None:
    s = parse_ss_line(SS_FIRST_RTO)
    assert (s.timer, s.timer_left_s, s.retrans, s.probes) == ("on", 0.352, 1, 0)
    assert (s.backoff, s.rto_ms, s.unacked, s.retrans_total, s.lost) == (1, 408, 1, 2, 1)
    assert s.bytes_retrans == 20 and s.send_q == 10
    assert s.netstat() == "on (0.35/1/0)"
    b = parse_ss_line(SS_BACKED_OFF)
    assert (b.timer_left_s, b.retrans, b.backoff, b.rto_ms, b.retrans_total) == (
        6.1, 5, 5, 6528, 6)
    d = parse_ss_line(SS_DUE)
    assert (d.timer, d.timer_left_s, d.retrans) == ("on", 0.0, 5)


def test_ss_two_line_output_and_other_timers() -> None:
    ka, tw, zw, syn = parse_ss_output(SS_TWO_LINES)
    assert (ka.timer, ka.timer_left_s, ka.probes, ka.retrans) == ("keepalive", 28, 0, 0)
    assert ka.rto_ms == 204 and ka.netstat() == "keepalive (28.00/0/0)"
    assert (tw.state, tw.timer, tw.timer_left_s, tw.rto_ms) == ("FIN-WAIT-2", "timewait", 58,
                                                                None)
    assert (zw.timer, zw.timer_left_s, zw.probes, zw.retrans) == ("persist", 0.088, 1, 0)
    assert zw.retrans_total == 1 and zw.backoff == 2 and zw.send_q == 32600
    assert zw.netstat() == "probe (0.09/0/1)"  # what netstat -o calls the persist timer
    assert (syn.state, syn.timer, syn.retrans, syn.rto_ms) == ("SYN-SENT", "on", 1, 1000)


def test_ss_output_empty() -> None:
    assert parse_ss_output("") == []


def test_ss_row_columns() -> None:
    row = parse_ss_line(SS_FIRST_RTO).row(1.5)
    assert row["t_s"] == "1.500" and row["timer"] == "on" and row["timer_left_s"] == "0.352"
    assert row["retrans"] == 1 and row["rto_ms"] == "408" and row["netstat"] == "on (0.35/1/0)"


# `conntrack -L -p tcp` in the router/LB netns (DNAT VIP -> server, ct mark 1)
CT_PLAIN = (
    "tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=54796 dport=7000 "
    "src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=54796 [ASSURED] mark=1 use=1\n"
    "tcp      6 299 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=39344 dport=7000 "
    "src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=39344 [ASSURED] mark=1 use=1\n"
    "tcp      6 58 CLOSE_WAIT src=198.18.0.1 dst=198.18.0.100 sport=54784 dport=7000 "
    "src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=54784 [ASSURED] mark=1 use=1\n"
)
CT_EXTENDED = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.1 dst=198.18.0.100 sport=39344 "
    "dport=7000 src=198.18.1.2 dst=198.18.0.1 sport=7000 dport=39344 [ASSURED] mark=1 use=1 "
    "id=228867239"
)
# Constructed in conntrack-tools' format (a dropped SYN never confirms an entry, so none
# could be captured): an unanswered connection.
CT_UNREPLIED = (
    "tcp      6 118 SYN_SENT src=198.18.0.1 dst=198.18.0.100 sport=52282 dport=7000 "
    "[UNREPLIED] src=198.18.2.2 dst=198.18.0.1 sport=7000 dport=52282 mark=2 use=1"
)


def test_conntrack_lines_like_ipvsadm() -> None:
    est, retrans, cw = parse_conntrack_output(CT_PLAIN)
    assert est == LbConnection("TCP", 431999, "ESTABLISHED", "198.18.0.1:54796",
                               "198.18.0.100:7000", "198.18.1.2:7000", 1)
    assert retrans.expire == "04:59" and retrans.expire_s == 299
    assert cw.state == "CLOSE_WAIT" and cw.expire == "00:58"
    assert parse_conntrack_line(CT_EXTENDED) == LbConnection(
        "TCP", 431999, "ESTABLISHED", "198.18.0.1:39344", "198.18.0.100:7000",
        "198.18.1.2:7000", 1)
    un = parse_conntrack_line(CT_UNREPLIED)
    assert un is not None and (un.state, un.destination, un.mark) == (
        "SYN_SENT", "198.18.2.2:7000", 2)
    row = est.row(2.0)
    assert (row["t_s"], row["pro"], row["expire"]) == ("2.000", "TCP", "7199:59")


def test_conntrack_ignores_other_lines() -> None:
    text = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n\n"
    assert parse_conntrack_output(text) == []


NSTAT_JSON = (
    '{"kernel":{"IpInReceives":0,"TcpRetransSegs":6,"TcpExtTCPTimeouts":6,'
    '"TcpExtTCPLossProbes":1,"TcpExtTCPAbortOnTimeout":1}}'
)
PROC_SNMP = (  # /proc/thread-self/net/snmp of a fresh client namespace (abridged: Ip, Tcp)
    "Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams "
    "InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout "
    "ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits\n"
    "Ip: 2 64 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0 0 0 2\n"
    "Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails "
    "EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n"
    "Tcp: 1 200 120000 -1 1 0 0 0 0 0 1 1 0 0 0\n"
)


def test_nstat_json_and_proc_parse() -> None:
    c = kernel_counters.parse_nstat_json(NSTAT_JSON)
    assert c["TcpRetransSegs"] == 6 and c["TcpExtTCPLossProbes"] == 1
    p = kernel_counters.parse_proc_net(PROC_SNMP)
    assert p["TcpRetransSegs"] == 1 and p["TcpMaxConn"] == -1 and p["IpOutRequests"] == 2


def test_counter_delta() -> None:
    before = {"TcpRetransSegs": 3, "TcpExtTCPLossProbes": 0}
    after = {"TcpRetransSegs": 9, "TcpExtTCPLossProbes": 1, "TcpExtTCPTimeouts": 6}
    assert kernel_counters.delta(before, after) == {
        "TcpRetransSegs": 6, "TcpExtTCPLossProbes": 1, "TcpExtTCPTimeouts": 6}


TCPDUMP_STDERR = (
    "tcpdump: listening on to-router, link-type EN10MB (Ethernet), snapshot length 256 bytes\n"
    "30 packets captured\n30 packets received by filter\n0 packets dropped by kernel\n"
)


def test_tcpdump_stats() -> None:
    assert sniffer.parse_tcpdump_stats(TCPDUMP_STDERR) == (30, 30, 0)
    assert sniffer.parse_tcpdump_stats("1 packet captured\n") == (1, None, None)


def test_choose_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sniffer, "find_binary", lambda _name: "/usr/bin/tcpdump")
    assert sniffer.choose_tool("auto", load="idle")[0] == "scapy"
    assert sniffer.choose_tool("auto")[0] == "scapy"
    tool, why = sniffer.choose_tool("auto", load="busy")
    assert tool == "tcpdump" and "busy" in why
    assert sniffer.choose_tool("auto", expected_pps=5000)[0] == "tcpdump"
    assert sniffer.choose_tool("scapy", load="busy") == ("scapy", "requested")
    monkeypatch.setattr(sniffer, "find_binary", lambda _name: None)
    tool, why = sniffer.choose_tool("auto", load="busy")
    assert tool == "scapy" and "not installed" in why
    with pytest.raises(LabError):
        sniffer.choose_tool("tcpdump")
    with pytest.raises(LabError):
        sniffer.choose_tool("wireshark")
