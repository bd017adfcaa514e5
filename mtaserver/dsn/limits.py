"""Hard limits on what the bounce parser reads (hostile input must stay cheap)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_bytes: int = 2 * 1024 * 1024  # the report parts of a bounce come first
    max_line: int = 8192  # longer lines are cut
    max_header_bytes: int = 128 * 1024  # top-level header block beyond this is dropped
    max_depth: int = 12  # MIME nesting walked
    max_parts: int = 200  # MIME parts walked
    max_text: int = 64 * 1024  # human-readable text scanned for free-form bounces
    max_recipients: int = 500


DEFAULT_LIMITS = ParseLimits()
