"""The admin HTTP API and ``/metrics`` (README: "Admin API and metrics").

Like the CLI, this is an operator front end: it calls the same operations the CLI calls
(spool operator ops, users, suppressions, privacy, stats, DNS records) and adds only HTTP,
JSON and bearer-token auth. Modules: ``server`` (listener, auth, errors), ``routes`` (queue,
events, stats, DKIM/DNS, metrics), ``people`` (users, suppressions, privacy), ``tokens``,
``deps``. Nothing is imported here, so ``mtaserver admin token``
(and every other CLI command, which all load this package's CLI module) stays quick.
"""
