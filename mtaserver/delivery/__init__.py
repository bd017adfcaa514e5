"""Outbound delivery mechanism: MX hosts in turn, STARTTLS per policy, per-recipient results.

Never touches the database; the scheduler applies policy to what ``deliver`` returns.
"""

from mtaserver.delivery.agent import DeliveryAgent, ReturnPath

__all__ = ["DeliveryAgent", "ReturnPath"]
