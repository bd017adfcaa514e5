"""Shared test helpers: a loopback DNS server and other real peers."""
