"""The admin HTTP API and ``/metrics`` (README: "Admin API and metrics").

Like the CLI, this is an operator front end: it calls the same operations the CLI calls
(spool operator ops, users, suppressions, stats, DNS records) and adds only HTTP, JSON and
bearer-token auth.
"""

from mtaserver.admin.routes import AdminApi, AdminDeps
from mtaserver.admin.server import AdminServer, build_web_app
from mtaserver.admin.tokens import TokenError, TokenInfo, TokenStore

__all__ = [
    "AdminApi",
    "AdminDeps",
    "AdminServer",
    "TokenError",
    "TokenInfo",
    "TokenStore",
    "build_web_app",
]
