"""DKIM: key loading, signing and the TXT records to publish (README: "DKIM and DNS records")."""

from mtaserver.dkim.errors import DkimError, DkimKeyError, DkimMessageError
from mtaserver.dkim.keys import Algorithm, DkimKey, KeySet, load_key
from mtaserver.dkim.signer import DkimSigner, sign_message

__all__ = [
    "Algorithm",
    "DkimError",
    "DkimKey",
    "DkimKeyError",
    "DkimMessageError",
    "DkimSigner",
    "KeySet",
    "load_key",
    "sign_message",
]
