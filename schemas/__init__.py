"""The contract on the bus: canonical schemas, mappings, topic names, connection settings, serde.

This package imports no other project package; every stage depends on it.
"""
