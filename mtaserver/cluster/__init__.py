"""Several nodes, one set of limits: cluster-wide shaping and the node registry in Redis.

``scripts`` holds the Lua scripts (atomic in Redis), ``client`` the connection and typed
calls, ``shared`` the permits the scheduler asks for (local ``limit / nodes`` when Redis is
unreachable), ``registry`` the heartbeats behind ``mtaserver cluster status``.
"""
