"""What is kept of a client IP address: the ``[tracking] ip_privacy`` setting.

- ``truncate`` (default): IPv4 to its /24 (``198.51.100.0``), IPv6 to its /48;
- ``hash``: a keyed hash (HMAC-SHA256 with the tracking key, 16 hex digits) - lets
  repeated visits from one address be told apart without storing the address;
- ``full``: the address as seen;
- ``none``: nothing.

Bot detection looks at the full address in memory before this is applied; only the
treated value is ever written.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

MODES = ("truncate", "hash", "full", "none")


class IpPrivacy:
    def __init__(self, mode: str, key: bytes) -> None:
        if mode not in MODES:
            raise ValueError(f"ip privacy must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self._key = key
        self._cache: dict[str, str] = {}

    def apply(self, ip: str) -> str:
        """The stored form of ``ip`` (memoized: the same clients come back)."""
        out = self._cache.get(ip)
        if out is None:
            if len(self._cache) >= 50_000:
                self._cache.clear()
            out = self._cache[ip] = self._apply(ip)
        return out

    def _apply(self, ip: str) -> str:
        if self.mode == "none" or not ip:
            return ""
        if self.mode == "full":
            return ip
        if self.mode == "hash":
            return hmac.new(self._key, ip.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[
                :16
            ]
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        prefix = 24 if addr.version == 4 else 48
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)
