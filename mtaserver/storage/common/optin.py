"""The double opt-in owners' values — a list's confirmation mail settings, a membership
waiting for its confirmation — and a pending row as one, the same on either backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtaserver.contacts import ContactError, normalize_address


@dataclass(frozen=True, slots=True)
class OptInSettings:
    """A list's confirmation mail: None fields take the built-in defaults."""

    from_address: str | None = None
    subject: str | None = None
    body: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"from": self.from_address, "subject": self.subject, "body": self.body}

    def check(self) -> None:
        """ContactError naming the field (``confirm.from``, ...) when one is unusable."""
        if self.from_address is not None:
            normalize_address(self.from_address, "confirm.from")
        for name, value, cap in (("subject", self.subject, 200), ("body", self.body, 20_000)):
            if value is not None and (not isinstance(value, str) or len(value) > cap):
                raise ContactError(f"confirm.{name}: text of at most {cap} characters",
                                   f"confirm.{name}")  # fmt: skip
        if self.subject is not None and ("\r" in self.subject or "\n" in self.subject):
            raise ContactError("confirm.subject: one line", "confirm.subject")
        if self.body is not None and "{{confirm_url}}" not in self.body:
            raise ContactError("confirm.body: must contain {{confirm_url}}", "confirm.body")


@dataclass(frozen=True, slots=True)
class PendingConfirm:
    list_id: int
    contact_id: int
    owner: str
    list_name: str
    address: str
    settings: OptInSettings


def pending_confirm(r: Sequence[Any]) -> PendingConfirm:
    """A ``(list_id, contact_id, owner, list name, address, from_address, subject, body)``
    row of the pending statement."""
    return PendingConfirm(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]),
                          OptInSettings(r[5], r[6], r[7]))  # fmt: skip
