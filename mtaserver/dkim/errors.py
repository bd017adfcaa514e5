"""Errors raised by DKIM key loading and signing, each with the SMTP reply it maps to."""

from __future__ import annotations

from mtaserver.errors import MtaError


class DkimError(MtaError):
    """Base class; ``reply`` is the SMTP reply the submission pipeline should give."""

    reply: tuple[int, str, str] = (451, "4.3.0", "Temporary signing failure, try again later")


class DkimKeyError(DkimError):
    """A configured key cannot be used (missing, unsafe mode, too small, wrong type).

    The message names the config key path (e.g. ``dkim[1].key``) so an operator can fix it.
    """


class DkimMessageError(DkimError):
    """The message itself cannot be signed (its header is malformed): a permanent failure."""

    reply = (554, "5.6.0", "Message header is malformed and cannot be DKIM-signed")
