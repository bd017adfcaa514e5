"""The process model: submission in N worker processes, one owner process for the rest.

``[server] workers = 1`` (the default) runs everything in one process, exactly as before.
With N > 1, :mod:`~mtaserver.workers.pool` (in the owner) starts N
:mod:`~mtaserver.workers.child` processes that run SMTP, AUTH, cleanup, tracking and DKIM
on their own cores and hand each signed message to the owner over a socketpair
(:mod:`~mtaserver.workers.frames`); the owner commits it (group commit) and acks, and the
worker answers 250 only then.
"""

from mtaserver.workers.pool import WorkerPool

__all__ = ["WorkerPool"]
