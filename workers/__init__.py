"""Process wiring for ``batchd worker`` (no business logic here)."""
