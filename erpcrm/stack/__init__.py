"""The local stack: real Kafka, schema registry, PostgreSQL and Prometheus on loopback."""

from erpcrm.stack.layout import StackLayout
from erpcrm.stack.manager import ComponentStatus, LocalStack

__all__ = ["ComponentStatus", "LocalStack", "StackLayout"]
