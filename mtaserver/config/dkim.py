"""``[[dkim]]``: signing keys. Key material is loaded and checked by ``mtaserver.dkim``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class DkimKeyConfig:
    domain: str
    selector: str
    key: Path
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    where: str  # the config key path, for error messages about the key file


def parse(readers: list[Reader]) -> tuple[DkimKeyConfig, ...]:
    out = []
    for r in readers:
        algorithm = r.choice(
            "algorithm", ("rsa-sha256", "ed25519-sha256", "rsa", "ed25519"), "rsa-sha256"
        )
        out.append(
            DkimKeyConfig(
                domain=r.string("domain").lower().rstrip("."),
                selector=r.string("selector"),
                key=r.path("key", must_exist=True, readable=True),
                algorithm={"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}.get(
                    algorithm, algorithm
                ),
                where=r.where(),
            )
        )
        r.finish()
    return tuple(out)
