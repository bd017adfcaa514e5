"""The HTTP send API: SendGrid v3 ``POST /v3/mail/send`` and its batch endpoints.

``server`` is the aiohttp listener (API-key auth, SendGrid-shaped errors, bounded bodies);
``send`` turns one request into queued messages through the same pipeline as SMTP
submission; ``batches`` serves ``/v3/mail/batch`` and ``/v3/user/scheduled_sends``.
The stores it needs are Protocols in ``deps``; ``app.api`` wires the concrete ones in.
"""

from mtaserver.api.deps import ApiDeps, NoTemplates, TemplateSource
from mtaserver.api.server import ApiServer, build_api_app

__all__ = ["ApiDeps", "ApiServer", "NoTemplates", "TemplateSource", "build_api_app"]
