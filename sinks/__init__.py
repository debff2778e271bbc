"""Sinks: apply canonical events to the opposite system, idempotently and in order."""
