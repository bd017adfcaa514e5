"""The option blocks of a SendGrid request: ``asm``, ``mail_settings``, ``tracking_settings``.

Only what mtaserver acts on is read (unsubscribe groups, sandbox mode, click / open /
subscription tracking); the other documented options are reported as not acted on.
"""

from __future__ import annotations

from typing import Final

from mtaserver.sendapi.checks import Checker
from mtaserver.sendapi.model import Asm, TrackingSettings

_TRACKING: Final = {
    "click_tracking": ("enable", "enable_text"),
    "open_tracking": ("enable", "substitution_tag"),
    "subscription_tracking": ("enable", "text", "html", "substitution_tag"),
}


def parse_asm(c: Checker, value: object, max_groups: int) -> Asm | None:
    if value is None:
        return None
    d = c.obj(value, "asm")
    if d is None:
        return None
    c.note_unknown(d, ("group_id", "groups_to_display"), "asm.")
    group = d.get("group_id")
    if not isinstance(group, int) or isinstance(group, bool):
        c.error("The ASM group ID must be an integer.", "asm.group_id")
        return None
    shown = d.get("groups_to_display", [])
    if not isinstance(shown, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) for g in shown
    ):
        c.error(
            "The ASM Group IDs to display must be an array of integers.", "asm.groups_to_display"
        )
        return None
    if len(shown) > max_groups:
        c.error(
            f"There is a limit of {max_groups} unsubscribe groups that can be displayed to a "
            "user at a time.",
            "asm.groups_to_display",
        )
        return None
    return Asm(group, tuple(int(g) for g in shown))


def parse_sandbox(c: Checker, value: object) -> bool:
    if value is None:
        return False
    d = c.obj(value, "mail_settings")
    if d is None:
        return False
    c.note_unknown(d, ("sandbox_mode",), "mail_settings.")
    box = d.get("sandbox_mode")
    if box is None:
        return False
    sandbox = c.obj(box, "mail_settings.sandbox_mode")
    if sandbox is None:
        return False
    c.note_unknown(sandbox, ("enable",), "mail_settings.sandbox_mode.")
    enabled = c.boolean(
        sandbox.get("enable"),
        "mail_settings.sandbox_mode.enable",
        "The sandbox mode enable param should be a boolean value.",
    )
    return bool(enabled)


def parse_tracking(c: Checker, value: object) -> TrackingSettings | None:
    if value is None:
        return None
    d = c.obj(value, "tracking_settings")
    if d is None:
        return None
    c.note_unknown(d, _TRACKING, "tracking_settings.")
    got: dict[str, dict[str, object]] = {}
    for block, keys in _TRACKING.items():
        raw = d.get(block)
        if raw is None:
            got[block] = {}
            continue
        sub = c.obj(raw, f"tracking_settings.{block}")
        got[block] = sub or {}
        if sub is not None:
            c.note_unknown(sub, keys, f"tracking_settings.{block}.")
    click, opened, sub = got["click_tracking"], got["open_tracking"], got["subscription_tracking"]
    at = "tracking_settings."
    return TrackingSettings(
        click=c.boolean(
            click.get("enable"),
            at + "click_tracking.enable",
            "The click tracking enable param should be a boolean value.",
        ),
        click_in_text=c.boolean(
            click.get("enable_text"),
            at + "click_tracking.enable_text",
            "The click tracking enable text must be a boolean value.",
        ),
        open=c.boolean(
            opened.get("enable"),
            at + "open_tracking.enable",
            "The open tracking enable param should be a boolean value.",
        ),
        open_substitution_tag=_text(
            c,
            opened,
            "substitution_tag",
            at + "open_tracking.substitution_tag",
            "The open tracking substitution tag must be a string.",
        ),
        subscription=c.boolean(
            sub.get("enable"),
            at + "subscription_tracking.enable",
            "The subscription tracking enable param should be a boolean value.",
        ),
        subscription_text=_text(
            c,
            sub,
            "text",
            at + "subscription_tracking.text",
            "The subscription tracking unsubscribe content for text/plain messages must be a "
            "string.",
        ),
        subscription_html=_text(
            c,
            sub,
            "html",
            at + "subscription_tracking.html",
            "The subscription tracking unsubscribe content for text/html messages must be a "
            "string.",
        ),
        subscription_substitution_tag=_text(
            c,
            sub,
            "substitution_tag",
            at + "subscription_tracking.substitution_tag",
            "The subscription tracking substitution tag must be a string value.",
        ),
    )


def _text(c: Checker, d: dict[str, object], key: str, field: str, message: str) -> str | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        c.error(message, field)
        return None
    return value
