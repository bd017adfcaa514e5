"""Client TLS contexts for the three policies.

* ``opportunistic`` (RFC 7435): encrypt when STARTTLS is offered, accept any certificate —
  an unauthenticated encrypted channel beats plaintext, and refusing self-signed MX
  certificates would only push mail back to plaintext.
* ``required``: STARTTLS with the certificate verified against the MX host name (system
  trust store, or ``ca_file``); anything less defers.
* ``none``: never STARTTLS.
"""

from __future__ import annotations

import ssl

MODES = ("opportunistic", "required", "none")


class TlsContexts:
    """The two client contexts, built once (building a context reads the trust store)."""

    def __init__(self, ca_file: str | None = None) -> None:
        opp = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        opp.check_hostname = False
        opp.verify_mode = ssl.CERT_NONE
        opp.minimum_version = ssl.TLSVersion.TLSv1_2
        self.opportunistic = opp
        verified = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        verified.check_hostname = True
        verified.verify_mode = ssl.CERT_REQUIRED
        verified.minimum_version = ssl.TLSVersion.TLSv1_2
        self.verified = verified
