"""The cost ledger: one row per turn in Postgres (or SQLite), written from a Redis stream."""
