"""End to end: mail submitted to a running daemon reaches the MX signed, and a SIGHUP that
switches the active selector while mail flows leaves no message unsigned.

smtplib submits on the plaintext trusted-network listener; delivery relays to an aiosmtpd
sink; the keys are published only on the test DnsServer, which OpenDKIM queries.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
from pathlib import Path

from mtaserver.dkim import keys as K
from tests.support.daemon import Daemon, TestConfig
from tests.support.dkimtools import dkim_entries, dkimpy_verify, make_key, opendkim_verify, publish
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import SinkGroup, wait_for


def _message(i: int) -> bytes:
    return (
        f"From: App <app@example.com>\r\nTo: u{i}@dest.test\r\nSubject: rotation {i}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Grüße, message {i}.\r\n"
    ).encode()


def _selectors(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    return [
        m.group(1)
        for line in unfolded.split("\r\n")
        if line.lower().startswith("dkim-signature:")
        for m in [re.search(r"\bs=([^;\s]+)", line)]
        if m
    ]


async def test_daemon_signs_and_rotates_without_unsigned_mail(tmp_path: Path) -> None:
    keys = [
        make_key(tmp_path, "example.com", "s1", K.Algorithm.RSA),
        make_key(tmp_path, "example.com", "s2", K.Algorithm.RSA),
        make_key(tmp_path, "example.com", "ed1", K.Algorithm.ED25519),
    ]
    with DnsServer() as dns:
        publish(dns, keys)
        async with SinkGroup(["127.0.0.2"]) as sinks:
            sink = sinks["127.0.0.2"]
            cfg = TestConfig(tmp_path, tls=False)
            cfg.set(
                "delivery",
                relay_host=f"127.0.0.2:{sinks.port}",
                tls="none",
                nameservers=[dns.nameserver],
            )
            cfg.set("shaping", poll_interval="20ms")
            cfg.data["dkim"] = dkim_entries(keys, {"s1", "ed1"})
            host, port = cfg.address("submission", "listen_plain")

            def send(indexes: range) -> None:
                with smtplib.SMTP(host, port, timeout=30) as client:
                    for i in indexes:
                        client.sendmail("app@example.com", [f"u{i}@dest.test"], _message(i))

            daemon = Daemon(cfg)
            await asyncio.to_thread(daemon.start)
            try:
                await asyncio.to_thread(send, range(1))
                await wait_for(lambda: len(sink.messages) == 1, 30)
                first = sink.messages[0].data
                assert _selectors(first) == ["s1", "ed1"]
                assert dkimpy_verify(first, keys) == [True, True]
                od = opendkim_verify(first, dns, tmp_path)
                assert sorted((r.result, r.selector) for r in od) == [
                    ("pass", "ed1"),
                    ("pass", "s1"),
                ]

                # Switch the active RSA selector while a client keeps submitting.
                cfg.data["dkim"] = dkim_entries(keys, {"s2", "ed1"})
                cfg.write()
                flow = threading.Thread(target=send, args=(range(1, 41),))
                flow.start()
                await asyncio.to_thread(daemon.reload)
                await asyncio.to_thread(flow.join, 60)
                await asyncio.to_thread(send, range(41, 42))
                await wait_for(lambda: len(sink.messages) == 42, 60)
            finally:
                await asyncio.to_thread(daemon.stop)

            seen = set()
            for received in sink.messages:
                selectors = _selectors(received.data)
                assert len(selectors) == 2 and selectors[1] == "ed1", selectors
                assert selectors[0] in ("s1", "s2")
                seen.add(selectors[0])
                assert dkimpy_verify(received.data, keys) == [True, True]
            last = next(m for m in sink.messages if b"rotation 41" in m.data)
            assert _selectors(last.data) == ["s2", "ed1"]
            assert seen == {"s1", "s2"}
