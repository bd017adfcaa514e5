"""Client responses of the bearer-token SASL mechanisms: RFC 7628 OAUTHBEARER and XOAUTH2.

Pure parsing (no I/O, no verification): what the client sent, or None when it is malformed.
"""

from __future__ import annotations


def parse_oauthbearer(blob: bytes) -> tuple[str, str | None] | None:
    """RFC 7628 client response → (token, authzid or None); None if malformed."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    gs2, sep, rest = text.partition("\x01")
    if not sep or not rest.endswith("\x01\x01"):
        return None
    fields = gs2.split(",")
    if len(fields) != 3 or fields[0] not in ("n", "y") or fields[2] != "":
        return None  # "p=..." (channel binding) is not offered
    authzid = None
    if fields[1]:
        if not fields[1].startswith("a="):
            return None
        authzid = fields[1][2:].replace("=2C", ",").replace("=3D", "=")
    return _bearer_value(rest[:-2].split("\x01")), authzid


def parse_xoauth2(blob: bytes) -> tuple[str, str | None] | None:
    """``user=...\x01auth=Bearer ...\x01\x01`` → (token, user or None); None if malformed."""
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\x01\x01"):
        return None
    pairs = text[:-2].split("\x01")
    user = next((p[5:] for p in pairs if p.startswith("user=")), None)
    return _bearer_value(pairs), user or None


def _bearer_value(pairs: list[str]) -> str:
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "auth":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""
