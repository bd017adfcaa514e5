"""The inbound listener (port 25 for the bounce domain only) and what a bounce does.

Accepts RCPT only for a VERP return path with a valid signature, the configured
complaints address, or the tracking ``unsubscribe_mailto`` address (handed to a
:class:`Unsubscribes` sink, ``mtaserver.tracking.mailto``); everything else is
``550 5.7.1`` — this listener is never a relay and offers no AUTH. ``MAIL FROM:<>`` is
welcome (that is what bounces use). The session is the hardened one submission uses too
(:class:`mtaserver.smtpd.GuardedSMTP`): connection caps and rates per IP, idle and session
deadlines answered with 421, DATA read with its size enforced and bare CR/LF, NUL and
over-long lines refused or normalized, control characters in commands refused; any
handler failure answers ``451 4.3.0`` and never the exception text.

A message that arrives is parsed off the event loop (:func:`mtaserver.dsn.parse_bounce_async`)
and each failed recipient it reports is tied to ``(queue_id, idx)`` — by the VERP token it
was sent to, else by a VERP address or the Message-ID found in the returned message — then
marked bounced through the spool with a ``bounced`` event (source ``async``), and the
suppression policy (:func:`mtaserver.suppression.decide`) applied to its reason: a dead
address is suppressed for every sender, anything else only counted. Complaints (ARF)
record a ``complaint`` event and suppress for the sending domain of the message
complained about. Reports that cannot be tied to a message we sent change nothing (backscatter and
forgeries must not poison the suppression list).
"""

from mtaserver.inbound.bounces import BounceProcessor, Outcome
from mtaserver.inbound.listener import InboundHandler, InboundServer, InboundSMTP

__all__ = ["BounceProcessor", "InboundHandler", "InboundSMTP", "InboundServer", "Outcome"]
