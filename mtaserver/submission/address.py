"""Strict parsing of envelope addresses and command arguments.

aiosmtpd's address parser is lenient (it drops source routes, accepts address literals and
quoted ``@``) and Python's ``parseaddr`` silently rewrites malformed input (PITFALLS), so
every MAIL/RCPT address is checked again here. Routing syntax that asks a host to relay
onwards — ``%``-hack, ``!``-paths, quoted ``@``, source routes, ``[ip]`` literals — is a
``RoutingForm``: submission refuses it with 5.7.1 whoever the client is, because no
legitimate application needs it and it is how open relays are found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mtaserver.smtpd.hygiene import bad_argument, has_source_route

__all__ = ["AddressError", "Mailbox", "bad_argument", "has_source_route", "parse_mailbox"]

_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+$")
_LABEL = re.compile(
    r"^[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?$"
)
_QTEXT = re.compile(r"^(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*$")


class AddressError(ValueError):
    """The address is not a plain mailbox; ``routing`` tells a relay trick from bad syntax."""

    def __init__(self, message: str, *, routing: bool = False) -> None:
        super().__init__(message)
        self.routing = routing


@dataclass(frozen=True, slots=True)
class Mailbox:
    local: str
    domain: str  # lower-cased, no trailing dot

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def parse_mailbox(addr: str) -> Mailbox:
    """Parse ``local@domain`` strictly; raise AddressError otherwise."""
    if not addr:
        raise AddressError("empty address")
    if len(addr.encode("utf-8", "surrogatepass")) > 254:
        raise AddressError("address too long")
    if addr.startswith("@"):
        raise AddressError("source routes are not accepted", routing=True)
    if addr.startswith('"'):
        end = _closing_quote(addr)
        if end is None:
            raise AddressError("unterminated quoted local part")
        local, rest = addr[: end + 1], addr[end + 1 :]
        inner = local[1:-1]
        if any(c in inner for c in "@%!"):
            raise AddressError("routing characters in local part", routing=True)
        if not _QTEXT.match(inner):
            raise AddressError("bad quoted local part")
        if not rest.startswith("@"):
            raise AddressError("missing domain")
        domain = rest[1:]
    else:
        local, at, domain = addr.rpartition("@")
        if not at:
            if "!" in addr or "%" in addr:
                raise AddressError("UUCP/percent paths are not accepted", routing=True)
            raise AddressError("missing domain")
        if "@" in local:
            raise AddressError("more than one @", routing=True)
        if "%" in local or "!" in local:
            raise AddressError("routing characters in local part", routing=True)
        if not local or any(not part or not _ATEXT.match(part) for part in local.split(".")):
            raise AddressError("bad local part")
    if len(local.encode("utf-8", "surrogatepass")) > 64:
        raise AddressError("local part too long")
    if domain.startswith("["):
        raise AddressError("address literals are not accepted", routing=True)
    if "@" in domain or "%" in domain or "!" in domain:
        raise AddressError("routing characters in domain", routing=True)
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
        raise AddressError("bad domain")
    if labels[-1].isdigit():
        raise AddressError("bad domain")
    return Mailbox(local=local, domain=domain.lower())


def _closing_quote(text: str) -> int | None:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return None
