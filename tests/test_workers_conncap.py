"""The shared per-IP connection table: its counts equal a dict's under random churn, across
regions (one per worker), with probe runs that collide and entries deleted from them."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from mtaserver.ratelimit import Refusal
from mtaserver.workers import conncap


# 64 slots for 60 addresses: long probe runs, entries deleted from the middle of them
@pytest.mark.parametrize(("slots", "addresses"), [(conncap.SLOTS, 400), (64, 60)])
def test_counts_match_a_dict_across_two_regions_under_churn(
    monkeypatch: pytest.MonkeyPatch, slots: int, addresses: int
) -> None:
    monkeypatch.setattr(conncap, "SLOTS", slots)
    monkeypatch.setattr(conncap, "REGION", slots * conncap._ENTRY.size)
    fd = conncap.create(2)
    try:
        a = conncap.SharedConnectionCap(fd, 0, 2, max_per_ip=3)
        b = conncap.SharedConnectionCap(fd, 1, 2, max_per_ip=3)
        rng = random.Random(7)
        ips = [f"10.0.{i // 250}.{i % 250}" for i in range(addresses - 3)]
        ips += ["::1", "fe80::1%lo", "not an address"]
        held: list[tuple[conncap.SharedConnectionCap, str]] = []
        model: Counter[str] = Counter()
        for _ in range(4000):
            if held and rng.random() < 0.45:
                cap, ip = held.pop(rng.randrange(len(held)))
                cap.release(ip)
                model[ip] -= 1
            else:
                cap, ip = rng.choice((a, b)), rng.choice(ips)
                refused = cap.admit(ip)
                assert (refused is Refusal.PER_IP) == (model[ip] >= 3), ip
                if refused is None:
                    held.append((cap, ip))
                    model[ip] += 1
            if rng.random() < 0.02:
                assert all(a.count(ip) == model[ip] == b.count(ip) for ip in ips)
        for cap, ip in held:
            cap.release(ip)
        assert all(a.count(ip) == 0 for ip in ips)
        a.close()
        b.close()
    finally:
        os.close(fd)


def test_a_dead_workers_counts_are_cleared_and_a_full_region_still_counts() -> None:
    fd = conncap.create(2)
    try:
        a = conncap.SharedConnectionCap(fd, 0, 2, max_per_ip=2)
        b = conncap.SharedConnectionCap(fd, 1, 2, max_per_ip=2)
        assert a.admit("127.0.0.1") is None and a.admit("127.0.0.1") is None
        assert b.admit("127.0.0.1") is Refusal.PER_IP
        conncap.clear(fd, 0)  # worker 0 died: the owner forgets its connections
        assert b.admit("127.0.0.1") is None and b.count("127.0.0.1") == 1
        a.close()
        again = conncap.SharedConnectionCap(fd, 0, 2, max_per_ip=2)  # its replacement
        assert again.count("127.0.0.1") == 1
        again.close()
        b.close()
    finally:
        os.close(fd)


def test_a_full_region_counts_the_rest_in_its_own_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conncap, "SLOTS", 4)
    monkeypatch.setattr(conncap, "REGION", 4 * conncap._ENTRY.size)
    fd = conncap.create(1)
    try:
        cap = conncap.SharedConnectionCap(fd, 0, 1, max_per_ip=1)
        ips = [f"192.0.2.{i}" for i in range(7)]
        assert all(cap.admit(ip) is None for ip in ips)
        assert all(cap.admit(ip) is Refusal.PER_IP for ip in ips)
        for ip in ips:
            cap.release(ip)
        assert all(cap.count(ip) == 0 for ip in ips)
        assert all(cap.admit(ip) is None for ip in ips)
        cap.close()
    finally:
        os.close(fd)
