"""The daemon runs the inbound listener from [inbound] and the CLI reaches the same list."""

from __future__ import annotations

import smtplib
from pathlib import Path

from mtaserver.devsetup import read_secret
from mtaserver.verp import Verp
from tests.support.daemon import Daemon, TestConfig, free_port


def test_daemon_inbound_listener_and_suppression_cli(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path)
    port = free_port()
    cfg.set("inbound", listen=f"127.0.0.1:{port}", bounce_domain="bounces.test",
            complaints_address="fbl@bounces.test")  # fmt: skip
    cfg.write()
    with Daemon(cfg) as d:
        verp = Verp(read_secret(Path(cfg.data["server"]["data_dir"]) / "secret.key"), "b",
                    "bounces.test")  # fmt: skip
        s = smtplib.SMTP("127.0.0.1", port, timeout=10)
        try:
            s.ehlo("remote.example")
            assert s.has_extn("starttls") and not s.has_extn("auth")
            assert s.mail("<>")[0] == 250
            assert s.rcpt("someone@example.org")[0] == 550  # never a relay
            assert s.rcpt("b+rabc-0-aaaaaaaaaaaaaaaa@bounces.test")[0] == 550  # forged
            assert s.rcpt(verp.address("NOSUCHQUEUEID", 0))[0] == 250
            code, _ = s.data(
                b"From: MAILER-DAEMON@remote.example\r\nSubject: failure notice\r\n\r\n"
                b"<gone@remote.example>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n"
            )
            assert code == 250  # accepted; nothing of ours to attribute it to
        finally:
            s.quit()
        r = d.cli("suppression", "check", "gone@remote.example")
        assert r.returncode == 0, r.stdout + r.stderr  # an unattributed bounce suppresses no one
        assert d.cli("suppression", "add", "bad@remote.example").returncode == 0
        r = d.cli("suppression", "check", "bad@remote.example")
        assert r.returncode == 1 and "reason=manual" in r.stdout
    assert "inbound_listening" in d.log()
