"""``[tracking]``: the public HTTP endpoint for opens, clicks and unsubscribes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    listen: tuple[str, int] | None
    base_url: str | None  # e.g. "https://t.example.com"
    secret_file: Path | None


def parse(r: Reader, default_secret: Path) -> TrackingConfig:
    base_url = r.string("base_url", None)
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise r.error("base_url", f"expected an http(s) URL, got {base_url!r}")
    cfg = TrackingConfig(
        listen=r.listen("listen", None),
        base_url=base_url.rstrip("/") if base_url else None,
        secret_file=r.path("secret_file", None) or default_secret,
    )
    r.finish()
    return cfg
