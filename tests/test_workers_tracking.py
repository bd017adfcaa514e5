"""Tracking with ``workers = 2``: the workers rewrite, the owner's endpoint honours it.

The rewrite (pixel, click links, List-Unsubscribe) runs in a worker with the token secret
the owner created; the tracking listener and the suppression list live in the owner. A
token minted in a worker must open there.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from email.message import EmailMessage
from pathlib import Path

import aiohttp

from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, wait_for
from tests.tracking.conftest import BROWSER
from tests.tracking.test_e2e import _message


async def test_tokens_minted_in_a_worker_open_in_the_owner(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("server", workers=2)
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("tracking", listen=f"127.0.0.1:{port}", base_url=base)
        host, smtp_port = cfg.address("submission", "listen_plain")
        with Daemon(cfg) as daemon:
            assert daemon.log().count("event=worker_ready") == 2

            def send() -> None:
                for _ in range(4):  # new connections: both workers, most likely
                    with smtplib.SMTP(host, smtp_port, timeout=30) as client:
                        client.sendmail("news@example.com", ["reader@dest.test"], _message())

            await asyncio.to_thread(send)
            await wait_for(lambda: len(sink.messages) == 4, 30)
            async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
                for received in sink.messages:
                    msg = email.message_from_bytes(received.data, policy=email.policy.default)
                    assert isinstance(msg, EmailMessage)
                    (unsub,) = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
                    assert unsub.startswith(base + "/u/")
                    html = next(
                        p for p in msg.walk() if p.get_content_type() == "text/html"
                    ).get_content()
                    (pixel,) = re.findall(r'<img src="([^"]+\.gif)"', html)
                    async with http.get(pixel) as r:
                        assert r.status == 200 and r.headers["Content-Type"] == "image/gif"
                    async with http.get(unsub) as r:  # the page for a valid token
                        assert r.status == 200
                async with http.post(unsub, data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200

            def suppressed() -> list[tuple[str, str]]:
                return [(r[0], r[1]) for r in cfg.query("SELECT address, reason FROM suppressions")]

            await wait_for(lambda: suppressed() == [("reader@dest.test", "unsubscribe")], 10)
            # the workers read the suppression list: the next message is refused at RCPT
            with smtplib.SMTP(host, smtp_port, timeout=30) as client:
                client.ehlo()
                client.mail("news@example.com")
                code, _ = client.rcpt("reader@dest.test")
                assert code == 550
