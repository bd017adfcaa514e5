"""DNS TXT record text for DKIM keys: 255-byte string splitting and tag parsing.

A TXT record is a sequence of character-strings of at most 255 bytes each; a 2048-bit RSA
``p=`` alone is ~392 characters, so the record must be split. Verifiers join the strings
without separators (RFC 6376 3.6.2.2), so the split may fall anywhere.
"""

from __future__ import annotations

MAX_STRING = 255


def split_txt(text: str, limit: int = MAX_STRING) -> tuple[str, ...]:
    """Split record text into character-strings of at most ``limit`` bytes."""
    data = text.encode("ascii")
    if not data:
        return ("",)
    return tuple(data[i : i + limit].decode("ascii") for i in range(0, len(data), limit))


def quote_txt(text: str) -> str:
    """Zone-file (and dnspython) syntax: each character-string quoted, space separated."""
    parts = []
    for s in split_txt(text):
        parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(parts)


def zone_line(name: str, rtype: str, value: str, ttl: int | None = None) -> str:
    """One resource record in zone-file syntax, with a fully-qualified owner name."""
    owner = name if name.endswith(".") else name + "."
    ttl_part = f"{ttl} " if ttl is not None else ""
    return f"{owner}\t{ttl_part}IN\t{rtype}\t{value}"


def parse_tags(text: str) -> dict[str, str]:
    """Parse a ``tag=value; ...`` list (DKIM key record); whitespace inside values is dropped."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        if "=" not in item:
            continue
        name, _, value = item.partition("=")
        tags[name.strip()] = "".join(value.split())
    return tags
