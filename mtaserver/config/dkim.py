"""``[[dkim]]``: signing keys, several per domain (rotation), one active per algorithm.

Each entry names a key file; this module checks the entry's syntax and that the file
exists. The key itself (mode 0600, RSA >= 2048 bits or Ed25519, matching ``algorithm``) is
checked by ``mtaserver.keyfiles`` right after the config is read, so a bad key still fails
at ``check-config`` and a bad SIGHUP keeps the old config; the signer loads the same files
into its key set (``mtaserver.dkim.keys.load_keyset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader


def normalize_domain(domain: str) -> str:
    """Lower-case A-label without the trailing dot (the form ``d=`` carries)."""
    d = domain.strip().rstrip(".").lower()
    if not d.isascii():
        d = d.encode("idna").decode("ascii")
    return d


@dataclass(frozen=True, slots=True)
class DkimKeyConfig:
    domain: str
    selector: str
    key: Path
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    where: str  # the config key path, for error messages about the key file
    active: bool = True  # signs new mail; false = still published, no longer signing


def parse(readers: list[Reader]) -> tuple[DkimKeyConfig, ...]:
    out: list[DkimKeyConfig] = []
    selectors: dict[tuple[str, str], str] = {}
    active: dict[tuple[str, str], str] = {}
    for r in readers:
        algorithm = r.choice(
            "algorithm", ("rsa-sha256", "ed25519-sha256", "rsa", "ed25519"), "rsa-sha256"
        )
        algorithm = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}.get(algorithm, algorithm)
        domain = r.string("domain")
        try:
            domain = normalize_domain(domain)
        except UnicodeError:
            raise r.error("domain", f"expected a domain name, got {domain!r}") from None
        if not domain or "." not in domain.strip("."):
            raise r.error("domain", f"expected a domain name, got {domain!r}")
        selector = r.string("selector")
        if not selector or not all(p.isascii() and p.replace("-", "").isalnum()
                                   for p in selector.split(".")):  # fmt: skip
            raise r.error("selector", f"expected a selector like 's2026', got {selector!r}")
        entry = DkimKeyConfig(
            domain=domain,
            selector=selector,
            key=r.path("key", must_exist=True, readable=True),
            algorithm=algorithm,
            where=r.where(),
            active=r.boolean("active", True),
        )
        r.finish()
        slot = (domain, selector)
        if slot in selectors:
            raise r.error("selector", f"{domain} selector {selector!r} is also {selectors[slot]}")
        selectors[slot] = r.where()
        if entry.active:
            pair = (domain, algorithm)
            if pair in active:
                raise r.error(
                    "active",
                    f"{domain} already has an active {algorithm} key ({active[pair]}); "
                    "exactly one key per algorithm signs: set active = false on the other",
                )
            active[pair] = r.where()
        out.append(entry)
    return tuple(out)
