"""SMTP submission: listeners, session hardening, and policy (see ``handler``)."""

from mtaserver.ratelimit import ConnectionLimiter, RateLimiter
from mtaserver.submission.handler import SubmissionHandler
from mtaserver.submission.listener import Listener, SubmissionServer
from mtaserver.submission.ports import Submitter, Suppressions
from mtaserver.submission.protocol import ListenerSpec, SessionSettings, SubmissionSMTP

__all__ = [
    "ConnectionLimiter",
    "Listener",
    "ListenerSpec",
    "RateLimiter",
    "SessionSettings",
    "SubmissionHandler",
    "SubmissionSMTP",
    "SubmissionServer",
    "Submitter",
    "Suppressions",
]
