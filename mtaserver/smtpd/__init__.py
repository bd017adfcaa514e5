"""The SMTP listener toolkit shared by submission (587/465) and inbound (25).

One hardened session (:class:`GuardedSMTP`) over aiosmtpd: per-IP connection limits,
idle and session deadlines answered with 421, DATA read and cleaned here (size, bare
CR/LF, NUL, line length, smuggling), command-argument hygiene and generic failure replies.
Each listener subclasses it with its own policy. aiosmtpd's private members are reached
only through :mod:`mtaserver.smtpd.aiosmtpd_compat`.
"""

from mtaserver.smtpd.session import Admission, Guard, GuardedSMTP, SessionRegistry

__all__ = ["Admission", "Guard", "GuardedSMTP", "SessionRegistry"]
