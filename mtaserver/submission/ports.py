"""What submission needs from the rest of the daemon: Protocols the wiring satisfies."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from mtaserver.model import Submission
from mtaserver.prepare import Header


class AuthUser(Protocol):
    @property
    def name(self) -> str: ...

    def owns(self, domain: str) -> bool: ...


class CredentialChecker(Protocol):
    async def verify(self, login: bytes, password: bytes) -> AuthUser | None: ...


class BearerVerdict(Protocol):
    """One token's verdict (``mtaserver.oauth.BearerVerdict``); never carries the token."""

    @property
    def user(self) -> AuthUser | None: ...
    @property
    def temporary(self) -> bool: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def name(self) -> str | None: ...
    @property
    def issuer(self) -> str | None: ...


class BearerChecker(Protocol):
    """OAuth access tokens → users (``mtaserver.oauth.BearerAuthenticator``)."""

    @property
    def max_token_size(self) -> int: ...
    @property
    def discovery_url(self) -> str | None: ...

    async def authenticate(self, token: str, claimed: str | None) -> BearerVerdict: ...


class FailureThrottle(Protocol):
    """AUTH failures per IP and user (``mtaserver.auth.AuthThrottle``); awaitable where the
    count lives in another process (the workers' owner, so it is one for the daemon)."""

    def locked(self, ip: str, user: str | None) -> bool | Awaitable[bool]: ...

    def failed(self, ip: str, user: str | None) -> float | Awaitable[float]: ...

    def succeeded(self, user: str) -> None: ...


class SmtpObserver(Protocol):
    """Metrics for what leaves no event: sessions and AUTH failures per listener, and
    suppressed recipients refused at RCPT (accept-and-drop ones get an event)."""

    def session_started(self, listener: str) -> None: ...

    def auth_failed(self, listener: str) -> None: ...

    def recipient_refused(self, reason: str) -> None: ...


class SpaceCheck(Protocol):
    """Free space where the queue lives (``mtaserver.diskspace.FreeSpace``)."""

    def low(self, need: int = 0) -> bool: ...


class Submitter(Protocol):
    """The pipeline: returns the queue id once the message is durably queued."""

    async def submit(self, submission: Submission, header: Header | None = None) -> str: ...


class Suppressions(Protocol):
    """Returns a reason (or an object with ``reason``) when the address is suppressed."""

    async def check(self, address: str, sender_domain: str) -> object | None: ...
