"""The queue manager (qmgr): see :mod:`mtaserver.scheduler.core`."""

from mtaserver.scheduler.core import Scheduler
from mtaserver.scheduler.ports import Agent, MxLookup, OnBounce, QueueStore, SyncBounce

__all__ = ["Agent", "MxLookup", "OnBounce", "QueueStore", "Scheduler", "SyncBounce"]
