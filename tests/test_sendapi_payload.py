"""SendGrid v3 mail/send validation: the fields SendGrid names, its messages, its limits."""

from __future__ import annotations

import base64
import copy
import time
from types import MappingProxyType
from typing import Any

import pytest

from mtaserver.sendapi import Limits, parse_mail_send, too_large
from mtaserver.sendapi.checks import help_for, valid_email

NOW = 1_700_000_000
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"


def minimal() -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": "to@example.org", "name": "To"}]}],
        "from": {"email": "from@example.com", "name": "From"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


def errors(body: object, **kw: Any) -> list[tuple[str | None, str]]:
    out = parse_mail_send(body, now=NOW, **kw)
    assert not out.ok and out.request is None
    return [(e.field, e.message) for e in out.errors]


def fields(body: object, **kw: Any) -> set[str | None]:
    return {f for f, _ in errors(body, **kw)}


def test_minimal_request_parses_into_frozen_values() -> None:
    out = parse_mail_send(minimal(), now=NOW)
    assert out.ok and out.status == 202 and out.unknown == frozenset()
    r = out.request
    assert r is not None
    assert r.from_.email == "from@example.com" and r.from_.name == "From"
    assert r.personalizations[0].to[0].email == "to@example.org"
    assert r.content[0].type == "text/plain" and r.subject == "Hello"
    with pytest.raises(AttributeError):
        r.subject = "x"  # type: ignore[misc]


def test_full_request_keeps_every_documented_field() -> None:
    body = minimal()
    body["personalizations"] = [
        {
            "to": [{"email": "a@example.org"}],
            "cc": [{"email": "c@example.org"}],
            "bcc": [{"email": "b@example.org"}],
            "subject": "Per\r\nperson",
            "headers": {"X-P": "1"},
            "substitutions": {"-name-": "Ann"},
            "dynamic_template_data": {"user": {"tags": ["x"]}},
            "custom_args": {"p": "1"},
            "send_at": NOW + 60,
        }
    ]
    body |= {
        "reply_to_list": [{"email": "r1@example.com"}, {"email": "r2@example.com"}],
        "content": [
            {"type": "text/plain", "value": "t"},
            {"type": "text/html", "value": "<p>h</p>"},
            {"type": "text/calendar", "value": "BEGIN:VCALENDAR"},
        ],
        "attachments": [
            {
                "content": base64.b64encode(b"hello").decode(),
                "filename": "h.txt",
                "type": "text/plain",
            },
            {
                "content": "aW1n\n",
                "filename": "i.png",
                "disposition": "inline",
                "content_id": "img1",
            },
        ],
        "template_id": "d-abc",
        "headers": {"X-Global": "g"},
        "categories": ["news", "weekly"],
        "custom_args": {"g": "1"},
        "sections": {":s": "section"},
        "send_at": NOW + 3600,
        "batch_id": "batch-1",
        "asm": {"group_id": 42, "groups_to_display": [42, 43]},
        "mail_settings": {"sandbox_mode": {"enable": True}, "footer": {"enable": True}},
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": False, "substitution_tag": "%open%"},
            "subscription_tracking": {"enable": True, "text": "u", "html": "<a>u</a>"},
            "ganalytics": {"enable": True},
        },
        "ip_pool_name": "pool",
    }
    out = parse_mail_send(body, now=NOW)
    assert out.ok, out.errors
    r = out.request
    assert r is not None
    p = r.personalizations[0]
    assert p.recipients == ("a@example.org", "c@example.org", "b@example.org")
    assert p.subject == "Per person"  # CR/LF never reaches a header
    assert p.headers == (("X-P", "1"),) and p.substitutions == (("-name-", "Ann"),)
    assert isinstance(p.dynamic_template_data, MappingProxyType)
    assert p.dynamic_template_data["user"]["tags"] == ("x",)
    assert p.custom_args == (("p", "1"),) and p.send_at == NOW + 60
    assert [a.email for a in r.reply_to_list] == ["r1@example.com", "r2@example.com"]
    assert [c.type for c in r.content] == ["text/plain", "text/html", "text/calendar"]
    assert r.attachments[0].content == b"hello" and r.attachments[0].disposition == "attachment"
    assert r.attachments[1].content == b"img" and r.attachments[1].content_id == "img1"
    assert r.dynamic and r.template_id == "d-abc"
    assert r.categories == ("news", "weekly") and r.sections == ((":s", "section"),)
    assert r.send_at == NOW + 3600 and r.batch_id == "batch-1"
    assert r.asm is not None and r.asm.group_id == 42 and r.asm.groups_to_display == (42, 43)
    assert r.sandbox_mode is True
    t = r.tracking
    assert (t.click, t.click_in_text, t.open, t.subscription) == (True, False, False, True)
    assert t.open_substitution_tag == "%open%" and t.subscription_html == "<a>u</a>"
    assert out.unknown == {"ip_pool_name", "mail_settings.footer", "tracking_settings.ganalytics"}


def test_unknown_fields_are_accepted_and_named_without_indexes() -> None:
    body = minimal()
    body["future_field"] = {"x": 1}
    body["personalizations"].append(
        {"to": [{"email": "x@example.org", "nickname": "n"}], "extra": 1}
    )
    body["content"][0]["charset"] = "utf-8"
    out = parse_mail_send(body, now=NOW)
    assert out.ok
    assert out.unknown == {
        "future_field",
        "personalizations.extra",
        "personalizations.to.nickname",
        "content.charset",
    }


# -- required fields, each missing in turn ------------------------------------------------
def test_missing_personalizations() -> None:
    for value in (None, []):
        body = minimal()
        if value is None:
            del body["personalizations"]
        else:
            body["personalizations"] = value
        out = parse_mail_send(body, now=NOW)
        assert out.status == 400
        (e,) = out.errors
        assert e.field == "personalizations"
        assert (
            e.message
            == "The personalizations field is required and must have at least one personalization."
        )
        assert e.help == HELP + "#-Personalizations-Errors"


def test_missing_from() -> None:
    body = minimal()
    del body["from"]
    out = parse_mail_send(body, now=NOW)
    (e,) = out.errors
    assert e.field == "from.email" and e.message.startswith("The from object must be provided")
    assert e.help == HELP + "#message.from"
    body["from"] = {"name": "no email"}
    assert fields(body) == {"from.email"}


def test_missing_to() -> None:
    body = minimal()
    body["personalizations"] = [{"cc": [{"email": "c@example.org"}]}]
    out = parse_mail_send(body, now=NOW)
    (e,) = out.errors
    assert e.field == "personalizations.0.to"
    assert e.message.startswith("The to array is required for all personalization objects")
    assert e.help == HELP + "#message.personalizations.to"
    body["personalizations"] = [{"to": [{"name": "x"}]}]
    assert errors(body) == [
        ("personalizations.0.to.0.email", "The to email parameter is required.")
    ]


def test_missing_subject_unless_template_or_every_personalization_has_one() -> None:
    body = minimal()
    del body["subject"]
    assert fields(body) == {"subject"}
    body["personalizations"][0]["subject"] = "Per person"
    assert parse_mail_send(body, now=NOW).ok
    body = minimal()
    del body["subject"]
    body["template_id"] = "d-1"
    assert parse_mail_send(body, now=NOW).ok


def test_missing_content_unless_template() -> None:
    body = minimal()
    del body["content"]
    out = parse_mail_send(body, now=NOW)
    (e,) = out.errors
    assert e.field == "content" and e.message.startswith("Unless a valid template_id is provided")
    body["template_id"] = "d-1"
    assert parse_mail_send(body, now=NOW).ok
    body = minimal()
    body["content"] = [{"type": "text/plain"}]
    assert fields(body) == {"content.0.value"}
    body["content"] = [{"type": "text/plain", "value": ""}]
    assert errors(body) == [
        ("content.0.value", "The content value must be a string at least one character in length.")
    ]
    body["content"] = [{"value": "x"}]
    assert fields(body) == {"content.0.type"}


# -- wrong types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("personalizations",), "x", "personalizations"),
        (("personalizations", 0), "x", "personalizations.0"),
        (("personalizations", 0, "to"), {"email": "a@example.org"}, "personalizations.0.to"),
        (("personalizations", 0, "to", 0), "a@example.org", "personalizations.0.to.0"),
        (("personalizations", 0, "to", 0, "email"), 5, "personalizations.0.to.0.email"),
        (("personalizations", 0, "subject"), 5, "personalizations.0.subject"),
        (("personalizations", 0, "send_at"), "soon", "personalizations.0.send_at"),
        (("personalizations", 0, "send_at"), True, "personalizations.0.send_at"),
        (("personalizations", 0, "headers"), {"X-A": 1}, "personalizations.0.headers"),
        (("personalizations", 0, "substitutions"), {"-a-": 1}, "personalizations.0.substitutions"),
        (("personalizations", 0, "custom_args"), {"a": 1}, "personalizations.0.custom_args"),
        (
            ("personalizations", 0, "dynamic_template_data"),
            [1],
            "personalizations.0.dynamic_template_data",
        ),
        (("from",), "from@example.com", "from"),
        (("from", "name"), 7, "from.name"),
        (("subject",), ["x"], "subject"),
        (("content",), {"type": "text/plain"}, "content"),
        (("content", 0), "text", "content.0"),
        (("content", 0, "value"), 3, "content.0.value"),
        (("template_id",), 12, "template_id"),
        (("headers",), {"X-A": True}, "headers"),
        (("categories",), "news", "categories"),
        (("categories",), ["ok", 3], "categories"),
        (("custom_args",), {"a": ["x"]}, "custom_args"),
        (("send_at",), 1.5, "send_at"),
        (("batch_id",), 1, "batch_id"),
        (("asm",), {"group_id": "1"}, "asm.group_id"),
        (("asm",), {"group_id": 1, "groups_to_display": ["2"]}, "asm.groups_to_display"),
        (
            ("mail_settings",),
            {"sandbox_mode": {"enable": "yes"}},
            "mail_settings.sandbox_mode.enable",
        ),
        (
            ("tracking_settings",),
            {"click_tracking": {"enable": 1}},
            "tracking_settings.click_tracking.enable",
        ),
        (
            ("tracking_settings",),
            {"open_tracking": {"substitution_tag": 1}},
            "tracking_settings.open_tracking.substitution_tag",
        ),
        (("reply_to",), {"email": "not-an-address"}, "reply_to.email"),
        (("sections",), {"a": 1}, "sections"),
    ],
)
def test_wrong_types_name_the_field(path: tuple[Any, ...], value: object, field: str) -> None:
    body = minimal()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    out = parse_mail_send(body, now=NOW)
    assert out.status == 400 and out.request is None
    assert field in {e.field for e in out.errors}, out.errors
    for e in out.errors:
        assert e.help is None or e.help.startswith(HELP)


def test_type_errors_say_what_was_expected() -> None:
    body = minimal()
    body["personalizations"][0]["to"][0] = "a@example.org"
    (e,) = parse_mail_send(body, now=NOW).errors
    assert e.message == "Invalid type. Expected: object, given: string."
    assert errors("not an object") == [(None, "Invalid type. Expected: object, given: string.")]
    assert errors([minimal()]) == [(None, "Invalid type. Expected: object, given: array.")]


def test_invalid_addresses() -> None:
    for bad in [
        "plain",
        "a@b",
        "a @example.org",
        "a@exa mple.org",
        "<a@example.org>",
        "a@@example.org",
        "a@-x.org",
        "a..b@example.org",
        "a@example.org\r\nBcc: x@y.org",
    ]:
        assert not valid_email(bad), bad
    for good in [
        "a@example.org",
        "first.last+tag@sub.example.co.uk",
        "o'neil@example.org",
        "üser@exämple.de",
    ]:
        assert valid_email(good), good
    body = minimal()
    body["from"]["email"] = "nope"
    assert errors(body) == [("from.email", "The from email does not contain a valid address.")]
    body = minimal()
    body["personalizations"][0]["to"][0]["email"] = "nope"
    assert errors(body) == [("personalizations.0.to.0.email", "Does not contain a valid address.")]
    body["personalizations"][0]["to"][0]["email"] = "a" * 320 + "@example.org"
    assert errors(body) == [
        (
            "personalizations.0.to.0.email",
            "The To email exceeds the maximum total length of 320 characters",
        )
    ]


def test_duplicate_recipients_in_one_personalization() -> None:
    body = minimal()
    body["personalizations"][0]["cc"] = [{"email": "TO@example.org"}]
    ((field, message),) = errors(body)
    assert field == "personalizations.0"
    assert (
        "first duplicate instance of [TO@example.org] in the personalizations.0.cc field" in message
    )


# -- limits ---------------------------------------------------------------------------------
def test_1001_personalizations_are_refused_and_1000_accepted() -> None:
    body = minimal()
    body["personalizations"] = [{"to": [{"email": f"r{i}@example.org"}]} for i in range(1001)]
    t0 = time.perf_counter()
    ((field, message),) = errors(body)
    assert time.perf_counter() - t0 < 1
    assert field == "personalizations"
    assert "limited to 1000 personalizations" in message and "You have provided 1001" in message
    body["personalizations"].pop()
    out = parse_mail_send(body, now=NOW)
    assert out.ok and len(out.request.personalizations) == 1000  # type: ignore[union-attr]


def test_total_recipients_are_capped_across_personalizations() -> None:
    body = minimal()
    body["personalizations"] = [
        {"to": [{"email": f"r{i}@example.org"}], "cc": [{"email": f"c{i}@example.org"}]}
        for i in range(501)
    ]
    assert errors(body) == [
        (
            "personalizations",
            "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
        )
    ]
    assert parse_mail_send(body, now=NOW, limits=Limits(max_recipients=2000)).ok


def test_configurable_limits() -> None:
    body = minimal()
    body["personalizations"] *= 3
    assert fields(body, limits=Limits(max_personalizations=2)) == {"personalizations"}
    body = minimal()
    body["categories"] = ["a", "b", "c"]
    assert fields(body, limits=Limits(max_categories=2)) == {"categories"}


def test_oversize_body_is_413() -> None:
    out = parse_mail_send(minimal(), now=NOW, body_size=34 * 1024 * 1024)
    assert out.status == 413 and out.request is None
    assert (
        out.errors[0].message == "The JSON payload you have included in your request is too large."
    )
    assert too_large().status == 413
    big = minimal()
    big["attachments"] = [
        {"content": "QUFB" * (2 * 1024 * 1024), "filename": "big.bin"}
    ]  # 8 MB of base64
    assert (
        parse_mail_send(big, now=NOW, limits=Limits(max_total_bytes=4 * 1024 * 1024)).status == 413
    )
    assert parse_mail_send(big, now=NOW).ok


def test_send_at_window_uses_the_given_clock() -> None:
    body = minimal()
    body["send_at"] = NOW + 72 * 3600
    assert parse_mail_send(body, now=NOW).ok
    body["send_at"] = NOW + 72 * 3600 + 1
    assert errors(body) == [("send_at", "Scheduling more than 72 hours in advance is forbidden.")]
    assert parse_mail_send(body, now=NOW + 10).ok  # the same value, an hour later: fine
    body["send_at"] = NOW - 3600  # in the past: accepted, sent at once
    assert parse_mail_send(body, now=NOW).ok
    body["personalizations"][0]["send_at"] = NOW + 100 * 3600
    assert fields(body) == {"personalizations.0.send_at"}


def test_header_rules() -> None:
    for name in [
        "To",
        "from",
        "Subject",
        "x-sg-id",
        "DKIM-Signature",
        "Content-Type",
        "BCC",
        "reply-to",
    ]:
        body = minimal()
        body["headers"] = {name: "v"}
        assert errors(body) == [("headers", "Header can not be one of the reserved keys.")], name
        body = minimal()
        body["personalizations"][0]["headers"] = {name: "v"}
        assert errors(body) == [
            ("personalizations.0.headers", "Header cannot be one of the reserved keys.")
        ]
    for bad in ["X Space", "X-Ünï", "X:colon", ""]:
        body = minimal()
        body["headers"] = {bad: "v"}
        assert errors(body) == [
            ("headers", "Header keys cannot contain non-ASCII characters and empty spaces.")
        ]
    body = minimal()
    body["headers"] = {"X-A": "1", "x-a": "2"}
    assert errors(body) == [("headers", "The headers cannot contain duplicate keys.")]
    body["headers"] = {"X-A": "line1\r\nBcc: victim@example.org"}
    out = parse_mail_send(body, now=NOW)
    assert out.ok and out.request.headers == (("X-A", "line1 Bcc: victim@example.org"),)  # type: ignore[union-attr]


def test_content_order_and_duplicates() -> None:
    body = minimal()
    body["content"] = [{"type": "text/html", "value": "h"}, {"type": "text/plain", "value": "t"}]
    ((field, message),) = errors(body)
    assert field == "content" and message.startswith("Following RFC 1341, section 7.2")
    body["content"] = [{"type": "text/plain", "value": "a"}, {"type": "text/plain", "value": "b"}]
    assert errors(body) == [
        ("content", "If present, text/plain and text/html may only be provided once.")
    ]
    body["content"] = [{"type": "text/plain; charset=utf-8", "value": "a"}]
    assert errors(body) == [("content.0.type", "Cannot contain ';', or CRLF characters.")]


def test_attachment_rules() -> None:
    def att(**kw: Any) -> dict[str, Any]:
        body = minimal()
        body["attachments"] = [{"content": "aGk=", "filename": "a.txt", **kw}]
        return body

    assert parse_mail_send(att(), now=NOW).ok
    assert errors(att(content="%%%")) == [
        ("attachments.0.content", "The attachment content must be base64 encoded.")
    ]
    assert fields(att(content="")) == {"attachments.0.content"}
    assert errors(att(filename=None)) == [("attachments.0.filename", "filename is required.")]
    assert fields(att(filename="a\r\n.txt")) == {"attachments.0.filename"}
    assert fields(att(type="")) == {"attachments.0.type"}
    assert fields(att(type="text/plain; x=1")) == {"attachments.0.type"}
    ((field, message),) = errors(att(disposition="sideways"))
    assert field == "attachments.0.disposition" and "You provided sideways." in message
    assert fields(att(disposition="inline")) == {"attachments.0.content_id"}
    assert fields(att(disposition="inline", content_id=5)) == {"attachments.0.content_id"}
    assert fields(att(disposition="inline", content_id="a\r\nb")) == {"attachments.0.content_id"}
    assert parse_mail_send(att(disposition="inline", content_id="cid1"), now=NOW).ok


def test_categories_custom_args_and_asm_rules() -> None:
    body = minimal()
    body["categories"] = ["a"] * 2
    ((_, message),) = errors(body)
    assert (
        message == "The categories must be a unique list, and you have included a more than once."
    )
    body["categories"] = ["x" * 256]
    assert fields(body) == {"categories"}
    body["categories"] = ["ünï"]
    assert errors(body) == [("categories", "Categories can not contain non-ASCII characters.")]
    body = minimal()
    body["custom_args"] = {"g": "x" * 6000}
    body["personalizations"][0]["custom_args"] = {"p": "y" * 6000}
    assert fields(body) == {"personalizations.0.custom_args"}
    body = minimal()
    body["asm"] = {"group_id": 1, "groups_to_display": list(range(26))}
    assert fields(body) == {"asm.groups_to_display"}
    body["reply_to"] = {"email": "r@example.com"}
    body["reply_to_list"] = [{"email": "r@example.com"}]
    assert "reply_to" in fields(body)


def test_deep_template_data_is_refused_not_crashed() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"d": deep}
    body = minimal()
    body["personalizations"][0]["dynamic_template_data"] = deep
    assert fields(body) == {"personalizations.0.dynamic_template_data"}


def test_errors_are_collected_not_just_the_first_and_the_input_is_untouched() -> None:
    body = minimal()
    body["from"] = {"email": "bad"}
    body["content"] = [{"type": "text/plain", "value": ""}]
    body["categories"] = 1
    before = copy.deepcopy(body)
    assert fields(body) == {"from.email", "content.0.value", "categories"}
    assert body == before
    many = minimal()
    many["personalizations"] = [{"to": [{"email": "bad"}]} for _ in range(500)]
    assert len(errors(many)) == 100  # bounded answer


def test_help_urls_follow_sendgrids_table() -> None:
    assert help_for("personalizations.3.to.0.email") == HELP + "#message.personalizations.to"
    assert help_for("attachments.2.content") == HELP + "#message.attachments.content"
    assert help_for("content.0.value") == HELP + "#message.content.value"
    assert help_for("from.email") == HELP + "#message.from"
    assert help_for("something.else") is None and help_for(None) is None
