"""Machine flagging, unique counting and stats over a scripted scenario, via real HTTP."""

from __future__ import annotations

import sqlite3

import pytest

from mtaserver.storage.sqlite.reports import Reports
from mtaserver.tracking import stats as stats_mod
from mtaserver.tracking.bots import BotDetector, BotRulesError, Hit, load_rules, parse_rules
from tests.tracking.conftest import BROWSER, Stack
from tests.tracking.helpers import codec

APPLE_MPP = "Mozilla/5.0"
GOOGLE = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel; +https://barracuda.com)"
LINKS = ("https://shop.example.com/a", "https://shop.example.com/b", "https://shop.example.com/c")


async def _open(
    stack: Stack, qid: str, idx: int, ua: str = BROWSER, xff: str | None = None
) -> None:
    headers = {"User-Agent": ua}
    if xff:
        headers["X-Forwarded-For"] = xff
    async with stack.http.get(
        f"{stack.base}/o/{codec().open_token(qid, idx)}.gif", headers=headers
    ) as r:
        assert r.status == 200


async def _click(
    stack: Stack, qid: str, idx: int, link: int, ua: str = BROWSER, method: str = "GET"
) -> None:
    tok = codec().click_token(qid, idx, LINKS[link], link, len(LINKS))
    async with stack.http.request(method, f"{stack.base}/c/{tok}", headers={"User-Agent": ua},
                                  allow_redirects=False) as r:  # fmt: skip
        assert r.status == 302
        assert r.headers["Location"] == LINKS[link]


async def _verdicts(stack: Stack, type_: str) -> list[tuple[str | None, bool, object]]:
    return [(rcpt, bool(d["machine"]), d.get("reason")) for _, rcpt, d in await stack.events(type_)]


async def test_machine_opens_are_flagged_not_dropped(stack: Stack) -> None:
    rcpts = (
        "a@x.example",
        "b@x.example",
        "c@x.example",
        "d@x.example",
        "e@x.example",
        "f@x.example",
    )
    await stack.message("QM", rcpts)
    for i, a in enumerate(rcpts):
        await stack.outcome("QM", i, a, "delivered")
    stack.clock.advance(600)
    await _open(stack, "QM", 0, APPLE_MPP)
    await _open(stack, "QM", 1, BROWSER, xff="17.58.101.4")  # Apple's network, via a trusted proxy
    await _open(stack, "QM", 2, GOOGLE)
    await _open(stack, "QM", 3, SCANNER)
    await _open(stack, "QM", 4, "")
    await _open(stack, "QM", 5, BROWSER, xff="203.0.113.77")
    await stack.settle()
    assert await _verdicts(stack, "open") == [
        ("a@x.example", True, "proxy:apple-mpp"),
        ("b@x.example", True, "proxy:apple-mpp"),
        ("c@x.example", False, None),  # Gmail fetches when the reader opens: a person
        ("d@x.example", True, "scanner-ua"),
        ("e@x.example", True, "no-user-agent"),
        ("f@x.example", False, None),
    ]
    # The client IP behind the proxy is the one recorded, truncated.
    assert (await stack.events("open"))[5][2]["client_ip"] == "203.0.113.0"
    assert (await stack.events("open"))[2][2]["proxy"] == "google-image-proxy"


async def test_link_scanner_clicks_are_flagged(stack: Stack) -> None:
    rcpts = (
        "early@x.example",
        "head@x.example",
        "burst@x.example",
        "human@x.example",
        "queued@x.example",
    )
    await stack.message("QS", rcpts)
    for i, a in enumerate(rcpts[:4]):
        await stack.outcome("QS", i, a, "delivered")
    stack.clock.advance(3)
    await _click(stack, "QS", 0, 0)  # 3 s after delivery: a scanner, not a person
    await _click(stack, "QS", 4, 0)  # not even delivered yet
    stack.clock.advance(600)
    await _click(stack, "QS", 1, 1, method="HEAD")  # HEAD: answered, never counted ...
    stack.clock.advance(1)
    await _click(stack, "QS", 1, 1)  # ... and the GET right after it is the scanner
    for link in range(3):  # every link of the message within a second
        await _click(stack, "QS", 2, link)
    stack.clock.advance(30)
    async with stack.http.head(f"{stack.base}/o/{codec().open_token('QS', 3)}.gif") as r:
        assert r.status == 200  # a HEAD on the pixel says nothing about links
    await _click(stack, "QS", 3, 2)  # a person, long after delivery
    stack.clock.advance(20)
    await _click(stack, "QS", 3, 0)  # ... who later clicks another link: still a person
    await stack.settle()
    assert await _verdicts(stack, "click") == [
        ("early@x.example", True, "early-click"),
        ("queued@x.example", True, "before-delivery"),
        ("head@x.example", True, "after-head"),
        ("burst@x.example", True, "burst"),
        ("burst@x.example", True, "burst"),
        ("burst@x.example", True, "burst"),
        ("human@x.example", False, None),
        ("human@x.example", False, None),
    ]


async def test_a_burst_of_opens_is_one_write(stack: Stack) -> None:
    rcpts = tuple(f"r{i}@x.example" for i in range(50))
    await stack.message("QB", rcpts)
    commits: list[int] = []
    stack.db.on_commit.append(lambda _s, ops: commits.append(ops))
    for i in range(50):
        await _open(stack, "QB", i)
    assert await stack.events("open") == []  # nothing written while the hits are held
    await stack.settle()
    assert len(await stack.events("open")) == 50
    assert len(commits) == 1 and commits[0] == 1  # one transaction, one op, one fsync


async def _scenario(stack: Stack) -> None:
    """The scripted scenario; the expected numbers are worked out by hand in the test."""
    await stack.message("M0", ("old@x.example",), campaign="oct", user="alice")
    await stack.outcome("M0", 0, "old@x.example", "delivered")
    stack.clock.advance(86400)
    await stack.message("M1", ("a@x.example", "b@x.example", "c@x.example", "d@x.example"),
                        campaign="nov", user="alice")  # fmt: skip
    await stack.message("M2", ("e@x.example", "f@x.example"), campaign="nov", user="alice")
    await stack.message("M3", ("g@x.example", "h@x.example"), campaign="dec", user="bob")
    o = stack.outcome
    await o("M1", 0, "a@x.example", "delivered")
    await o("M1", 1, "b@x.example", "delivered")
    await o("M1", 2, "c@x.example", "deferred", reply="451 try later")
    await o("M1", 2, "c@x.example", "deferred", reply="451 try later")
    await o("M1", 3, "d@x.example", "bounced", kind="hard", source="sync")
    await o("M2", 0, "e@x.example", "deferred", reply="421 busy")
    await o("M2", 1, "f@x.example", "bounced", kind="soft", source="expired")
    await o("M3", 0, "g@x.example", "delivered")
    await o("M3", 1, "h@x.example", "delivered")
    stack.clock.advance(5)
    await o("M1", 2, "c@x.example", "delivered")
    await _click(stack, "M1", 2, 0)  # 0 s after c's delivery: scanner
    await _open(stack, "M1", 0, APPLE_MPP)  # prefetch at delivery: machine
    await _open(stack, "M1", 1, GOOGLE)  # b reads it in Gmail: a person
    stack.clock.advance(3600)
    for _ in range(3):
        await _open(stack, "M1", 0)  # a reads it three times
        stack.clock.advance(60)
    await _open(stack, "M1", 2)
    await _open(stack, "M3", 0)
    await _click(stack, "M1", 0, 1)
    for link in range(3):
        await _click(stack, "M1", 1, link)  # b's scanner opens every link at once
    await _click(stack, "M3", 0, 0, method="HEAD")  # never counted
    stack.clock.advance(600)
    await stack.settle()
    tok = codec().unsubscribe_token("M1", 0)
    async with stack.http.post(
        f"{stack.base}/u/{tok}", data={"List-Unsubscribe": "One-Click"}
    ) as r:
        assert r.status == 200
    async with stack.http.post(
        f"{stack.base}/u/{tok}", data={"List-Unsubscribe": "One-Click"}
    ) as r:
        assert r.status == 200  # twice: still one unsubscribe
    await o("M3", 0, "g@x.example", "complaint")


async def test_stats_match_a_scripted_scenario_exactly(stack: Stack) -> None:
    await _scenario(stack)
    since = stack.clock.now() - 86400 / 2 - 3600  # after M0, before M1..M3
    nov = await stats_mod.compute(Reports(stack.db), since, campaign="nov")
    assert nov == stats_mod.Stats(
        messages=2, accepted=6, delivered=3, deferred=2, bounced_hard=1, bounced_soft=1,
        complaints=0, unsubscribes=1, unique_human_opens=3, unique_human_clicks=1,
        human_opens=5, human_clicks=1, machine_opens=1, machine_clicks=4,
    )  # fmt: skip
    assert nov.rates() == {
        "delivery_rate": 0.5, "bounce_rate": 0.3333, "open_rate": 1.0, "click_rate": 0.3333,
        "click_to_open_rate": 0.3333, "unsubscribe_rate": 0.3333, "complaint_rate": 0.0,
    }  # fmt: skip
    everything_recent = await stats_mod.compute(Reports(stack.db), since)
    assert everything_recent == stats_mod.Stats(
        messages=3, accepted=8, delivered=5, deferred=2, bounced_hard=1, bounced_soft=1,
        complaints=1, unsubscribes=1, unique_human_opens=4, unique_human_clicks=1,
        human_opens=6, human_clicks=1, machine_opens=1, machine_clicks=4,
    )  # fmt: skip
    bob = await stats_mod.compute(Reports(stack.db), 0, user="bob")
    assert (bob.messages, bob.accepted, bob.delivered, bob.complaints, bob.unique_human_opens,
            bob.human_clicks, bob.machine_clicks) == (1, 2, 2, 1, 1, 0, 0)  # fmt: skip
    alltime = await stats_mod.compute(Reports(stack.db))
    assert (alltime.messages, alltime.accepted, alltime.delivered) == (4, 9, 6)
    none = await stats_mod.compute(Reports(stack.db), campaign="nope")
    assert none == stats_mod.Stats(*([0] * 14))
    assert all(v is None for v in none.rates().values())


def test_rules_file_is_data_and_checked() -> None:
    rules = load_rules()
    assert {p.name for p in rules.proxies} >= {"apple-mpp", "google-image-proxy"}
    with pytest.raises(BotRulesError, match=r"proxy\[0\]: unknown key colour"):
        parse_rules('[[proxy]]\nname = "x"\ncolour = "red"\n')
    with pytest.raises(BotRulesError, match="networks"):
        parse_rules('[[proxy]]\nname = "x"\nnetworks = ["300.0.0.0/8"]\n')
    custom = parse_rules('[[proxy]]\nname = "corp"\nmachine = false\nuser_agents = ["CorpProxy"]\n')
    d = BotDetector(custom)
    v = d.by_agent("open", "Mozilla/5.0 CorpProxy/1.0", "198.51.100.1")
    assert (v.machine, v.proxy) == (False, "corp")


def test_burst_needs_every_link_or_burst_links() -> None:
    d = BotDetector(load_rules(), scanner_window=10, burst_window=2, burst_links=3)

    def hit(link: int, at: float, links: int) -> Hit:
        return Hit("click", "Q", 0, at, BROWSER, "198.51.100.1", link, links)

    two = [hit(0, 1000, 2), hit(1, 1001, 2)]
    assert d.classify(two[0], known=True, delivered_at=0, nearby=two[1:]).reason == "burst"
    # Two of five links within the window: a person can do that.
    two_of_five = [hit(0, 1000, 5), hit(1, 1001, 5)]
    assert not d.classify(
        two_of_five[0], known=True, delivered_at=0, nearby=two_of_five[1:]
    ).machine
    # Same link twice is not a burst; far apart is not a burst.
    assert not d.classify(
        hit(0, 1000, 2), known=True, delivered_at=0, nearby=[hit(0, 1000.5, 2)]
    ).machine
    assert not d.classify(
        hit(0, 1000, 2), known=True, delivered_at=0, nearby=[hit(1, 1010, 2)]
    ).machine
    # Retention removed the message: no timing rules, the user agent still counts.
    assert not d.classify(hit(0, 1000, 2), known=False, delivered_at=None).machine


async def test_odd_user_agents_and_unknown_recipients_are_still_recorded(stack: Stack) -> None:
    await stack.message("QU", ("u@x.example",))
    now = stack.clock.now()
    stack.recorder.hit(
        Hit("open", "QU", 0, now, "Mozilla/5.0 \udcff\udcfe (X11) ünï", "198.51.100.7")
    )
    stack.recorder.hit(Hit("open", "GONE", 3, now, BROWSER, "2001:db8:1:2::1"))
    await stack.settle()
    rows = await stack.events("open")
    assert [(q, r) for q, r, _ in rows] == [("QU", "u@x.example"), ("GONE", None)]
    assert rows[0][2]["user_agent"] == "Mozilla/5.0 ?? (X11) ünï"
    assert rows[0][2]["client_ip"] == "198.51.100.0"
    assert rows[1][2]["client_ip"] == "2001:db8:1::"
    assert rows[1][2]["idx"] == 3 and rows[1][2]["machine"] is False
    assert "reason" not in rows[1][2] and "url" not in rows[1][2]  # no null members


async def test_events_keep_one_index_and_every_lookup_uses_it(stack: Stack) -> None:
    """Each index on events is paid by every open and click; the one left serves all reads."""
    from mtaserver.storage.sqlite.events import INSERT_HITS
    from mtaserver.storage.sqlite.reports import COHORT_SQL
    from mtaserver.storage.sqlite.tracking import LOOKUP_TRACKED

    def plans(conn: sqlite3.Connection) -> dict[str, object]:
        def plan(sql: str, params: object) -> str:
            return " | ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))

        indexes = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='events' "
            "AND sql IS NOT NULL"
        ).fetchall()
        stats = {"since": 0, "until": 1e18, "campaign": "nov", "user": None}
        return {
            "indexes": [r[0] for r in indexes],
            "stats": plan(COHORT_SQL, stats),
            "insert": plan(INSERT_HITS, ("[]",)),
            "lookup": plan(LOOKUP_TRACKED, ("[]",)),
            "dsn": plan("SELECT data FROM events WHERE queue_id=? AND type='dsn_sent'", ("Q",)),
        }

    got = await stack.db.read(plans)
    assert got["indexes"] == ["events_queue_recipient"]
    assert "SEARCH e USING INDEX events_queue_recipient (queue_id=?)" in got["stats"]
    assert "SCAN e" not in got["stats"]
    assert (
        "SEARCH r USING INDEX sqlite_autoindex_recipients_1 (queue_id=? AND idx=?)"
        in (got["insert"])
    )
    assert "events_queue_recipient (queue_id=?)" in got["dsn"]
    assert (
        "SEARCH e USING INDEX events_queue_recipient (queue_id=? AND recipient=?)"
        in (got["lookup"])
    )
    # The click lookup finds the recipient's delivery by (queue_id, recipient).
    await stack.message("QI", ("a@x.example",))
    await stack.outcome("QI", 0, "a@x.example", "delivered")
    found = await stack.recorder.store.lookup([("QI", 0), ("QI", 5), ("GONE", 0), ("QI", 0)])
    assert list(found) == [("QI", 0)]
    assert found[("QI", 0)].delivered_at == stack.clock.now()
