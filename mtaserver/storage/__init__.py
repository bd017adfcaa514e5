"""The storage layer: each table has one owner module, the only code that writes it.

Stages do not import this package for its SQL; each declares a ``Protocol`` for what it
needs and ``app`` hands it the owner. ``sqlite/`` is the one backend today; a second one
(PostgreSQL) goes next to it with the same methods and the same frozen values.
"""
