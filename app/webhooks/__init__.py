"""Signed notifications of batch events: subscriptions, the outbox written with the
state change, and delivery after commit (Standard Webhooks)."""
