"""The local approval engine: users, definitions, instances, tasks, approval rules, logs."""
