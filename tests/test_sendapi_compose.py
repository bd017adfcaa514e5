"""Composing messages from a parsed request: rendering, MIME structure, headers, metadata.
Every message is parsed back with the stdlib ``email`` package and its parts checked."""

from __future__ import annotations

import base64
import email
import itertools
from email import policy
from email.message import EmailMessage
from typing import Any

from mtaserver.render import RenderBudget, TemplateCache
from mtaserver.sendapi import ComposeOutcome, StoredTemplate, compose, parse_mail_send

NOW = 1_700_000_000


def body(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "to@example.org", "name": "Ann Example"}]}],
        "from": {"email": "news@example.com", "name": "News"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Plain body"}],
    }
    base.update(extra)
    return base


def run(
    payload: dict[str, Any], template: StoredTemplate | None = None, **kw: Any
) -> ComposeOutcome:
    parsed = parse_mail_send(payload, now=NOW)
    assert parsed.ok and parsed.request is not None, parsed.errors
    counter = itertools.count()
    return compose(
        parsed.request,
        domain="mta.example.com",
        cache=kw.pop("cache", TemplateCache()),
        template=template,
        now=NOW,
        message_id=lambda d: f"<id{next(counter)}@{d}>",
        **kw,
    )


def parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def types(msg: EmailMessage) -> list[str]:
    return [p.get_content_type() for p in msg.walk()]


def test_plain_message_headers_and_envelope() -> None:
    out = run(
        body(
            reply_to={"email": "reply@example.com", "name": "Support"}, headers={"X-Campaign": "c1"}
        )
    )
    assert out.ok
    (m,) = out.messages
    assert m.envelope_sender == "news@example.com" and m.recipients == ("to@example.org",)
    assert m.message_id == "<id0@mta.example.com>"
    assert b"\r\n" in m.message and b"\n" not in m.message.replace(b"\r\n", b"")
    msg = parsed(m.message)
    assert msg["From"] == "News <news@example.com>"
    assert msg["To"] == "Ann Example <to@example.org>"
    assert msg["Reply-To"] == "Support <reply@example.com>"
    assert msg["Subject"] == "Hello" and msg["Message-ID"] == "<id0@mta.example.com>"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert msg["X-Campaign"] == "c1" and msg["MIME-Version"] == "1.0"
    assert types(msg) == ["text/plain"]
    assert msg.get_content().strip() == "Plain body"


def test_bcc_is_in_the_envelope_only_and_cc_in_headers() -> None:
    p = {
        "to": [{"email": "a@example.org"}],
        "cc": [{"email": "c@example.org"}],
        "bcc": [{"email": "b@example.org"}],
    }
    (m,) = run(body(personalizations=[p])).messages
    assert m.recipients == ("a@example.org", "c@example.org", "b@example.org")
    msg = parsed(m.message)
    assert msg["Cc"] == "c@example.org" and msg["Bcc"] is None
    assert b"b@example.org" not in m.message


def test_text_and_html_are_multipart_alternative() -> None:
    content = [
        {"type": "text/plain", "value": "Text"},
        {"type": "text/html", "value": "<p>HTML</p>"},
    ]
    (m,) = run(body(content=content)).messages
    msg = parsed(m.message)
    assert types(msg) == ["multipart/alternative", "text/plain", "text/html"]
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert plain.get_content().strip() == "Text" and html.get_content().strip() == "<p>HTML</p>"


def test_attachments_make_multipart_mixed_and_inline_parts_multipart_related() -> None:
    pdf, png = b"%PDF-1.4 fake", b"\x89PNG fake"
    attachments = [
        {
            "content": base64.b64encode(pdf).decode(),
            "filename": "invoice.pdf",
            "type": "application/pdf",
        },
        {
            "content": base64.b64encode(png).decode(),
            "filename": "logo.png",
            "type": "image/png",
            "disposition": "inline",
            "content_id": "logo",
        },
    ]
    content = [
        {"type": "text/plain", "value": "T"},
        {"type": "text/html", "value": '<img src="cid:logo">'},
    ]
    (m,) = run(body(content=content, attachments=attachments)).messages
    msg = parsed(m.message)
    assert types(msg) == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "multipart/related",
        "text/html",
        "image/png",
        "application/pdf",
    ]
    files = list(msg.iter_attachments())
    assert [(a.get_filename(), a.get_content()) for a in files] == [("invoice.pdf", pdf)]
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    image = next(p for p in related.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo>" and image.get_content_disposition() == "inline"
    assert image.get_content() == png


def test_attachment_without_html_body() -> None:
    att = [{"content": base64.b64encode(b"data").decode(), "filename": "d.bin"}]
    (m,) = run(body(attachments=att)).messages
    msg = parsed(m.message)
    assert types(msg) == ["multipart/mixed", "text/plain", "application/octet-stream"]


def test_dynamic_template_renders_each_personalization_with_its_data() -> None:
    people = [
        {
            "to": [{"email": f"p{i}@example.org"}],
            "dynamic_template_data": {"name": n, "items": items, "vip": vip},
        }
        for i, (n, items, vip) in enumerate(
            [("Ann", ["a", "b"], True), ("<Bob>", [], False), ("Cy", ["c"], False)]
        )
    ]
    template = StoredTemplate(
        subject="Hi {{name}}",
        html="<p>{{name}}</p>{{#if vip}}<b>VIP</b>{{/if}}<ul>{{#each items}}<li>{{this}}</li>{{else}}<li>none</li>{{/each}}</ul>",
        text="Hi {{{name}}}: {{length items}} items",
    )
    payload = body(personalizations=people, template_id="d-123")
    del payload["subject"], payload["content"]
    cache = TemplateCache()
    out = run(payload, template, cache=cache)
    assert out.ok and len(out.messages) == 3
    got = []
    for m in out.messages:
        msg = parsed(m.message)
        html, text = msg.get_body(("html",)), msg.get_body(("plain",))
        assert html is not None and text is not None
        got.append((msg["Subject"], html.get_content().strip(), text.get_content().strip()))
    assert got == [
        ("Hi Ann", "<p>Ann</p><b>VIP</b><ul><li>a</li><li>b</li></ul>", "Hi Ann: 2 items"),
        ("Hi &lt;Bob&gt;", "<p>&lt;Bob&gt;</p><ul><li>none</li></ul>", "Hi <Bob>: 0 items"),
        ("Hi Cy", "<p>Cy</p><ul><li>c</li></ul>", "Hi Cy: 1 items"),
    ]
    assert [m.message_id for m in out.messages] == [f"<id{i}@mta.example.com>" for i in range(3)]
    assert cache.misses == 3  # subject, html and text compiled once for three messages


def test_substitutions_without_a_dynamic_template() -> None:
    people = [
        {"to": [{"email": "a@example.org"}], "substitutions": {"-name-": "Ann", "-code-": "A1"}},
        {"to": [{"email": "b@example.org"}], "substitutions": {"-name-": "Bob", "-code-": "B2"}},
    ]
    payload = body(
        personalizations=people,
        subject="Code for -name-",
        content=[{"type": "text/plain", "value": "Hi -name-, code -code-. {{not handlebars}}"}],
        headers={"X-Code": "-code-"},
    )
    out = run(payload)
    subjects = [parsed(m.message)["Subject"] for m in out.messages]
    assert subjects == ["Code for Ann", "Code for Bob"]
    msg = parsed(out.messages[1].message)
    assert msg.get_content().strip() == "Hi Bob, code B2. {{not handlebars}}"
    assert msg["X-Code"] == "B2"


def test_dynamic_template_data_is_ignored_without_a_dynamic_template() -> None:
    p = [{"to": [{"email": "a@example.org"}], "dynamic_template_data": {"name": "Ann"}}]
    out = run(body(personalizations=p, content=[{"type": "text/plain", "value": "Hi {{name}}"}]))
    assert parsed(out.messages[0].message).get_content().strip() == "Hi {{name}}"


def test_legacy_template_wraps_the_request_content() -> None:
    template = StoredTemplate(
        subject="[News] <%subject%>", html="<div><%body%></div>", text="-- <%body%> --"
    )
    content = [{"type": "text/plain", "value": "T -n-"}, {"type": "text/html", "value": "<p>H</p>"}]
    p = [{"to": [{"email": "a@example.org"}], "substitutions": {"-n-": "N"}}]
    out = run(body(personalizations=p, content=content, template_id="0b9c7f5e-legacy"), template)
    msg = parsed(out.messages[0].message)
    assert msg["Subject"] == "[News] Hello"
    assert msg.get_body(("plain",)).get_content().strip() == "-- T N --"  # type: ignore[union-attr]
    assert msg.get_body(("html",)).get_content().strip() == "<div><p>H</p></div>"  # type: ignore[union-attr]


def test_unknown_template_is_an_error() -> None:
    payload = body(template_id="d-missing")
    out = run(payload)
    assert not out.ok and out.messages == ()
    assert out.errors[0].field == "template_id" and "d-missing" in out.errors[0].message


def test_template_that_expands_hugely_is_refused_with_a_field() -> None:
    template = StoredTemplate(
        html="{{#each a}}{{#each ../a}}{{#each ../../a}}{{{../../../big}}}{{/each}}{{/each}}{{/each}}"
    )
    p = [
        {
            "to": [{"email": "a@example.org"}],
            "dynamic_template_data": {"a": list(range(100)), "big": "x" * 10_000},
        }
    ]
    payload = body(personalizations=p, template_id="d-1")
    out = run(payload, template, budget=RenderBudget(max_output=1_000_000))
    assert not out.ok and out.errors[0].field == "template_id"
    assert "output size" in out.errors[0].message
    bad = run(payload, StoredTemplate(html="{{#if}}"))
    assert not bad.ok and bad.errors[0].field == "template_id"


def test_rendered_values_cannot_inject_headers() -> None:
    template = StoredTemplate(subject="Hi {{{name}}}", html="<p>x</p>")
    evil = "Ann\r\nBcc: victim@example.net"
    p = [{"to": [{"email": "a@example.org"}], "dynamic_template_data": {"name": evil}}]
    (m,) = run(body(personalizations=p, template_id="d-1"), template).messages
    msg = parsed(m.message)
    assert msg["Bcc"] is None and msg["Subject"] == "Hi Ann Bcc: victim@example.net"
    encoded = "=?UTF-8?Q?x=0D=0ABcc:_victim@example.net?="
    p = [{"to": [{"email": "a@example.org"}], "substitutions": {"-s-": encoded}}]
    out = run(body(personalizations=p, subject="S -s-"))
    # the stdlib re-serializes the decoded CRLF as a real header (CVE-2024-6923 family):
    # the header-block check refuses the message instead of queueing an injected Bcc
    assert not out.ok and out.errors[0].field == "personalizations.0"
    assert "unexpected header" in out.errors[0].message


def test_non_ascii_names_subjects_and_bodies_round_trip() -> None:
    p = [
        {"to": [{"email": "a@example.org", "name": "Zoë Ünïcode"}], "subject": "Grüße \u2013 你好"}
    ]
    content = [
        {"type": "text/plain", "value": "Grüße\n" * 3},
        {"type": "text/html", "value": "<p>你好</p>"},
    ]
    (m,) = run(body(personalizations=p, content=content)).messages
    assert m.message.isascii()
    msg = parsed(m.message)
    assert msg["Subject"] == "Grüße \u2013 你好" and msg["To"] == "Zoë Ünïcode <a@example.org>"
    # encoded text travels in MIME canonical form (CRLF line ends)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n") == "Grüße\n" * 3
    assert msg.get_body(("html",)).get_content().strip() == "<p>你好</p>"  # type: ignore[union-attr]


def test_long_lines_are_encoded_not_broken() -> None:
    long = "word " * 400
    (m,) = run(body(content=[{"type": "text/plain", "value": long}])).messages
    assert max(len(line) for line in m.message.split(b"\r\n")) <= 998
    assert parsed(m.message).get_content().rstrip("\r\n") == long


def test_metadata_merges_global_and_personalization_values() -> None:
    people = [
        {
            "to": [{"email": "a@example.org"}],
            "custom_args": {"user": "1", "shared": "p"},
            "send_at": NOW + 10,
        },
        {"to": [{"email": "b@example.org"}], "from": {"email": "alt@example.com"}},
    ]
    payload = body(
        personalizations=people,
        custom_args={"campaign": "c", "shared": "g"},
        categories=["news"],
        send_at=NOW + 99,
        batch_id="B1",
        asm={"group_id": 7, "groups_to_display": [7, 8]},
        mail_settings={"sandbox_mode": {"enable": True}},
        tracking_settings={"open_tracking": {"enable": True}, "click_tracking": {"enable": False}},
    )
    a, b = run(payload).messages
    assert dict(a.custom_args) == {"campaign": "c", "shared": "p", "user": "1"}
    assert dict(b.custom_args) == {"campaign": "c", "shared": "g"}
    assert (a.send_at, b.send_at) == (NOW + 10, NOW + 99)
    assert a.categories == ("news",) and a.batch_id == "B1"
    assert (a.asm_group_id, a.asm_groups_to_display) == (7, (7, 8))
    assert a.sandbox and a.tracking.open is True and a.tracking.click is False
    assert b.envelope_sender == "alt@example.com" and parsed(b.message)["From"] == "alt@example.com"
    assert (a.index, b.index) == (0, 1)


def test_user_message_id_replaces_the_generated_one() -> None:
    (m,) = run(body(headers={"Message-ID": "<mine@example.com>"})).messages
    msg = parsed(m.message)
    assert (
        msg.get_all("Message-ID") == ["<mine@example.com>"] and m.message_id == "<mine@example.com>"
    )
