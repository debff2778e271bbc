"""The shell: CLI, local stack, workload generator, benchmarks and the supervisor."""

__version__ = "0.1.0"
