"""Faust stream processing: raw change events into clean canonical business events."""
