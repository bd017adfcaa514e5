"""mtaserver: a self-hosted mail transfer and tracking server."""

__version__ = "0.1.0"
