"""The data a marketing template sees, built from stored rows (pure).

A template rendered for a contact sees::

    contact.email, contact.address       the contact's address
    contact.<attribute>                  every attribute (contact.first_name, ...)
    contact.attributes.<attribute>       the same, when a name collides with the above
    contact.consent.status|source|at     the consent record
    event.name, event.properties.*, event.occurred_at   the event that fired the step
    campaign.*                           what the campaign or trigger passes (name, ...)
    unsubscribe_url, preferences_url     always present (empty without a tracking host)

A field that is not there renders as "" (Handlebars' undefined), and a default is
declared with SendGrid's ``insert`` helper: ``{{insert contact.first_name "default=there"}}``.
Nothing here raises on missing data, so a contact without a name never stops a send.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mtaserver.contacts import iso
from mtaserver.storage.sqlite.contacts import Contact

_RESERVED = frozenset({"email", "address", "attributes", "consent"})


@dataclass(frozen=True, slots=True)
class Links:
    """The per-recipient URLs every template may use."""

    unsubscribe_url: str = ""
    preferences_url: str = ""


class LinkBuilder(Protocol):
    """Builds :class:`Links` for one recipient of one queued message.

    The composition root supplies it (from the tracking host's token codec): the
    unsubscribe link names the message, the preferences page the owner and address.
    """

    def __call__(self, queue_id: str, owner: str, address: str, sender_domain: str) -> Links: ...


def no_links(queue_id: str, owner: str, address: str, sender_domain: str) -> Links:
    """The builder without a tracking host: the keys exist and render empty."""
    return Links()


@dataclass(frozen=True, slots=True)
class EventData:
    """The event a triggered step is sent for."""

    name: str
    properties: Mapping[str, object] = field(default_factory=dict)
    occurred_at: float | None = None


@dataclass(frozen=True, slots=True)
class MergeInput:
    """What the caller adds to the contact: the event, the campaign, and extra keys."""

    event: EventData | None = None
    campaign: Mapping[str, object] = field(default_factory=dict)
    extra: Mapping[str, object] = field(default_factory=dict)


def _json(value: object) -> object:
    """A JSON-only copy (the template sandbox reads dicts, lists and scalars only)."""
    try:
        out: object = json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return {}
    return out


def contact_view(c: Contact) -> dict[str, object]:
    attrs = c.attrs()
    view: dict[str, object] = {k: v for k, v in attrs.items() if k not in _RESERVED}
    view |= {
        "email": c.address,
        "address": c.address,
        "attributes": attrs,
        "consent": {"status": c.consent_status, "source": c.consent_source,
                    "at": iso(c.consent_at)},
    }  # fmt: skip
    return view


def merge_data(c: Contact, given: MergeInput, links: Links) -> dict[str, object]:
    """The template data for ``c`` (extra keys never replace the stored ones)."""
    e = given.event
    event: dict[str, object] = {}
    if e is not None:
        props = _json(dict(e.properties))
        event = {"name": e.name, "properties": props if isinstance(props, dict) else {},
                 "occurred_at": iso(e.occurred_at)}  # fmt: skip
    campaign = _json(dict(given.campaign))
    extra = _json(dict(given.extra))
    data: dict[str, object] = dict(extra) if isinstance(extra, dict) else {}
    data |= {
        "contact": contact_view(c),
        "event": event,
        "campaign": campaign if isinstance(campaign, dict) else {},
        "unsubscribe_url": links.unsubscribe_url,
        "preferences_url": links.preferences_url,
    }
    return data
