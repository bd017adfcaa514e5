"""Per-message tracking switches and the header that carries them."""

from __future__ import annotations

from dataclasses import dataclass

TRACK_HEADER = "X-Mtaserver-Track"
CAMPAIGN_HEADER = "X-Mtaserver-Campaign"
_WORDS = frozenset({"opens", "clicks", "unsubscribe"})
_ALIASES = {
    "open": "opens",
    "click": "clicks",
    "unsub": "unsubscribe",
    "unsubscribes": "unsubscribe",
}


@dataclass(frozen=True, slots=True)
class TrackOptions:
    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False

    @property
    def any(self) -> bool:
        return self.opens or self.clicks or self.unsubscribe

    def merged(self, other: TrackOptions) -> TrackOptions:
        """Either source switching a feature on switches it on."""
        return TrackOptions(
            self.opens or other.opens,
            self.clicks or other.clicks,
            self.unsubscribe or other.unsubscribe,
        )


def parse_track_header(value: str) -> TrackOptions:
    """Parse ``X-Mtaserver-Track: opens, clicks[, unsubscribe]`` (also ``all``/``none``).

    Words are case-insensitive and separated by commas or spaces; unknown words are
    ignored so that a typo never rejects mail, it only leaves that feature off.
    """
    words = {w.strip().lower() for w in value.replace(",", " ").split()}
    if "none" in words or "off" in words:
        return TrackOptions()
    if "all" in words:
        return TrackOptions(True, True, True)
    on = {_ALIASES.get(w, w) for w in words} & _WORDS
    return TrackOptions("opens" in on, "clicks" in on, "unsubscribe" in on)


def parse_campaign_header(value: str) -> str | None:
    """A campaign tag: printable ASCII without spaces at the ends, at most 128 characters."""
    tag = "".join(c for c in value if 0x20 <= ord(c) < 0x7F).strip()[:128]
    return tag or None
