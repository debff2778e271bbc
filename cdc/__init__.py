"""Capture: PostgreSQL logical replication (pgoutput) into Debezium-compatible Kafka topics."""
