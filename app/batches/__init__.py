"""Batches: service (create, query, lifecycle), seeding, execution, monitor, retry, recovery."""
