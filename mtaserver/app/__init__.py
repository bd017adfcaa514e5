"""The composition root: the only package that knows every stage.

``wiring`` builds each component once, in dependency order, into frozen values; ``mail``
and ``ops`` turn components into :class:`~mtaserver.app.service.Service` objects;
``lifecycle`` opens the database, starts and supervises the services, and handles
signals, drain and reload. Stages never import each other, or this package.
"""

from mtaserver.app.lifecycle import App, serve

__all__ = ["App", "serve"]
