"""End to end: a tracked message submitted to the running daemon reaches the MX with its
links and pixel rewritten; a real HTTP client opens and clicks; ``mtaserver stats`` counts
exactly that; the one-click unsubscribe suppresses the address."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import smtplib
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, wait_for
from tests.tracking import samples
from tests.tracking.conftest import BROWSER


def _message() -> bytes:
    data = samples.alternative("quoted-printable")
    return data.replace(
        b"MIME-Version: 1.0\r\n",
        b"MIME-Version: 1.0\r\nX-Mtaserver-Track: opens, clicks, unsubscribe\r\n"
        b"X-Mtaserver-Campaign: winter-sale\r\n",
    ).replace(b"To: Reader <reader@example.org>", b"To: Reader <reader@dest.test>")


def _delivered(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE type='delivered'").fetchone()[0] == 1


def _stats(daemon: Daemon, *args: str) -> dict[str, Any]:
    out = daemon.cli("stats", "--json", *args)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


async def test_tracked_message_end_to_end(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        # Real time cannot be skipped here: let clicks right after delivery count as human.
        cfg.set("tracking", listen=f"127.0.0.1:{port}", base_url=base, scanner_window="1ms",
                burst_window="1ms", access_log=True)  # fmt: skip
        host, smtp_port = cfg.address("submission", "listen_plain")
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:

            def send() -> None:
                with smtplib.SMTP(host, smtp_port, timeout=30) as client:
                    client.sendmail("news@example.com", ["reader@dest.test"], _message())

            await asyncio.to_thread(send)
            await wait_for(lambda: len(sink.messages) == 1, 30)
            got = sink.messages[0].data
            assert b"X-Mtaserver-Track" not in got and b"X-Mtaserver-Campaign" not in got
            msg = email.message_from_bytes(got, policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            (unsub,) = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
            html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_content()
            plain = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
            assert plain.get_content() == samples.PLAIN
            pixels = re.findall(r'<img src="([^"]+\.gif)"', html)
            found = re.findall(r'href\s*=\s*"(' + re.escape(base) + r'/c/[^"]+)"', html, re.I)
            links = sorted(set(found))
            assert len(pixels) == 1 and pixels[0].startswith(base + "/o/")
            assert len(links) == len(samples.NEWSLETTER_LINKS)
            await wait_for(lambda: _delivered(cfg.database), 30)

            async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
                async with http.get(pixels[0]) as r:
                    assert r.status == 200 and r.headers["Content-Type"] == "image/gif"
                async with http.head(pixels[0]) as r:  # answered, never counted
                    assert r.status == 200
                followed = []
                for link in links[:2]:
                    async with http.get(link, allow_redirects=False) as r:
                        assert r.status == 302
                        followed.append(r.headers["Location"])
                assert set(followed) <= {u.replace(" ", "%20") for u in samples.NEWSLETTER_LINKS}, (
                    followed
                )
                async with http.get(unsub) as r:  # the confirmation page changes nothing
                    assert r.status == 200
                async with http.post(unsub, data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200

            def settled() -> bool:
                s = _stats(daemon, "--campaign", "winter-sale")
                return s["human_opens"] + s["machine_opens"] >= 1 and (
                    s["human_clicks"] + s["machine_clicks"] >= 2
                )

            await wait_for(settled, 30)
            s = await asyncio.to_thread(_stats, daemon, "--campaign", "winter-sale")
            assert {k: s[k] for k in (
                "messages", "accepted", "delivered", "unique_human_opens", "human_opens",
                "machine_opens", "unique_human_clicks", "human_clicks", "machine_clicks",
                "unsubscribes", "bounced",
            )} == {
                "messages": 1, "accepted": 1, "delivered": 1, "unique_human_opens": 1,
                "human_opens": 1, "machine_opens": 0, "unique_human_clicks": 1,
                "human_clicks": 2, "machine_clicks": 0, "unsubscribes": 1, "bounced": 0,
            }  # fmt: skip
            assert s["rates"]["open_rate"] == 1.0
            assert (await asyncio.to_thread(_stats, daemon, "--campaign", "other"))["messages"] == 0
            text = await asyncio.to_thread(daemon.cli, "stats")
            assert text.returncode == 0 and "1 unique human" in text.stdout
            with sqlite3.connect(cfg.database) as conn:
                rows = conn.execute("SELECT address, scope, reason FROM suppressions").fetchall()
            assert rows == [("reader@dest.test", "example.com", "unsubscribe")]
        finally:
            await asyncio.to_thread(daemon.stop)
        log = daemon.log()
        assert "component=tracking.access event=http method=GET path=/c/" in log
        for url in (*links, *pixels, unsub):  # tokens appear shortened only
            assert url.rsplit("/", 1)[1][:12] not in log
