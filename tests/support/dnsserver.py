"""A small authoritative DNS server on 127.0.0.1 for tests.

Serves records from a dict so dnspython, Perl's Net::DNS or OpenDKIM can all be pointed at
it (``nameservers = ["127.0.0.1:PORT"]``). It answers over UDP and TCP, runs in its own
threads (so it works beside any event loop and for subprocesses), and never forwards.

    with DnsServer() as dns:
        dns.add("example.com", "MX", "10 mx1.example.com.")
        dns.add("mx1.example.com", "A", "127.0.0.2")
        dns.nxdomain("gone.example")
        dns.servfail("broken.example")
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections import defaultdict
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self, host: str = "127.0.0.1", ttl: int = 300) -> None:
        self.host = host
        self.ttl = ttl
        self._records: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._rcodes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.queries: list[tuple[str, str]] = []
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None
        self.port = 0

    # -- zone data -------------------------------------------------------------------
    def add(self, name: str, rtype: str, value: str) -> None:
        with self._lock:
            self._records[(_norm(name), rtype.upper())].append(value)

    def set(self, name: str, rtype: str, values: list[str]) -> None:
        with self._lock:
            self._records[(_norm(name), rtype.upper())] = list(values)

    def remove(self, name: str, rtype: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._records if k[0] == _norm(name)]:
                if rtype is None or key[1] == rtype.upper():
                    del self._records[key]

    def nxdomain(self, name: str) -> None:
        with self._lock:
            self._rcodes[_norm(name)] = dns.rcode.NXDOMAIN

    def servfail(self, name: str) -> None:
        with self._lock:
            self._rcodes[_norm(name)] = dns.rcode.SERVFAIL

    @property
    def nameserver(self) -> str:
        """The ``ip:port`` string for ``[delivery] nameservers``."""
        return f"{self.host}:{self.port}"

    # -- answering -------------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        q = query.question[0]
        qname = _norm(q.name.to_text())
        qtype = dns.rdatatype.to_text(q.rdtype)
        with self._lock:
            self.queries.append((qname, qtype))
            rcode = self._rcodes.get(qname)
            values = list(self._records.get((qname, qtype), []))
            cname = list(self._records.get((qname, "CNAME"), []))
            exists = any(k[0] == qname for k in self._records)
        if rcode is not None:
            response.set_rcode(rcode)
            return response.to_wire()
        if not values and cname and qtype != "CNAME":
            values, qtype_out = cname, "CNAME"
        else:
            qtype_out = qtype
        if values:
            rdtype = dns.rdatatype.from_text(qtype_out)
            rrset = dns.rrset.RRset(q.name, dns.rdataclass.IN, rdtype)
            rrset.update_ttl(self.ttl)
            for value in values:
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rdtype, value))
            response.answer.append(rrset)
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> DnsServer:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                with contextlib.suppress(Exception):
                    sock.sendto(server.answer(data), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                try:
                    while True:
                        head = _recv_exact(sock, 2)
                        if not head:
                            return
                        (length,) = struct.unpack("!H", head)
                        reply = server.answer(_recv_exact(sock, length))
                        sock.sendall(struct.pack("!H", len(reply)) + reply)
                except Exception:
                    return

        # Find one port free for both UDP and TCP.
        for _ in range(50):
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), Tcp)
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover
            raise RuntimeError("no free port for the test DNS server")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, port
        for srv in (udp, tcp):
            threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _norm(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf
