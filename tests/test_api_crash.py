"""kill -9 while a 1,000-personalization request is being accepted: after the restart either
all 1,000 messages are queued and the retry with the same Idempotency-Key answers the
original 202, or none are and the retry queues them once. Never a part, never twice."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.apiserver import ApiDaemon

N = 1000


def _body(tag: str) -> bytes:
    return json.dumps({
        "personalizations": [{"to": [{"email": f"{tag}-{i}@dest.test"}],
                              "substitutions": {"-i-": str(i)}} for i in range(N)],
        "from": {"email": "app@example.com"},
        "subject": "crash -i-",
        "content": [{"type": "text/plain", "value": "number -i- " + "x" * 2000}],
        "send_at": int(time.time()) + 3600,  # stay queued: this test is about intake
    }).encode()  # fmt: skip


def _post(base: str, key: str, body: bytes, idem: str | None) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if idem:
        headers["Idempotency-Key"] = idem
    req = urllib.request.Request(f"{base}/v3/mail/send", body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def _count(api: ApiDaemon, tag: str) -> int:
    return int(api.query("SELECT count(*) FROM recipients WHERE address LIKE ?", f"{tag}-%")[0][0])


async def test_kill_during_a_1000_personalization_request(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        started = time.monotonic()
        status, _ = await asyncio.to_thread(_post, api.base_url, api.key, _body("warm"), None)
        took = time.monotonic() - started
        assert status == 202 and _count(api, "warm") == N
        outcomes = []
        for round_, fraction in enumerate((0.3, 0.6, 0.95)):
            tag, idem = f"r{round_}", f"crash-{round_}"
            body = _body(tag)
            answer: list[object] = []

            def client(body: bytes = body, idem: str = idem, answer: list[object] = answer) -> None:
                try:
                    answer.append(_post(api.base_url, api.key, body, idem))
                except OSError as exc:  # the daemon died mid-request
                    answer.append(exc)

            t = threading.Thread(target=client)
            t.start()
            await asyncio.sleep(took * fraction)
            assert api.daemon is not None
            await asyncio.to_thread(api.daemon.kill)
            await asyncio.to_thread(t.join, 60)
            got_202 = isinstance(answer[0], tuple) and answer[0][0] == 202
            await api.start()
            queued = _count(api, tag)
            assert queued in (0, N), f"round {round_}: {queued} of {N} queued after kill -9"
            if got_202:
                assert queued == N  # answered 202 means durable
            status, headers = await asyncio.to_thread(_post, api.base_url, api.key, body, idem)
            assert status == 202
            assert _count(api, tag) == N  # exactly once, whichever way the crash fell
            ids = {json.loads(r[0])["x_message_id"] for r in api.query(
                "SELECT e.data FROM events e JOIN recipients r "
                "ON r.queue_id = e.queue_id WHERE e.type='api_message' AND r.address LIKE ?",
                f"{tag}-%")}  # fmt: skip
            assert ids == {headers["X-Message-Id"]}
            assert (headers.get("Idempotent-Replayed") == "true") == (queued == N)
            outcomes.append((queued, got_202))
        print("outcomes (queued before retry, client saw 202):", outcomes)
        assert any(not seen for _, seen in outcomes), "no kill landed during a request"
