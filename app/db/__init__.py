"""Database layer: declarative base, portable column types, engine and session scopes."""
