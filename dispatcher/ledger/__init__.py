"""The cost ledger: one row per turn, written from a Redis stream, queried by tenant.

::

    workers ──XADD dispatcher:ledger──> Redis stream ──> writer.py (consumer group,
                                                          batches, ack after commit)
                                                              │ repository.write_turns
                                                              ▼
    ledger_turns (one row per turn_id) + ledger_daily / ledger_session_daily (roll-ups)
    ledger_prices (per policy version and model) <── repository.register_policy
                                                              │
    http.py (router: /v1/turns/{id}, /v1/ledger/summary, /v1/ledger/sessions/{id})
    cli.py  (ledger summary|turns|export|session, migrate, ledger-writer) ── queries.py

Modules: ``events`` (the stream's event, tolerant), ``models`` (tables), ``types`` (exact
money, UTC times, JSONB), ``rollup`` (pure sums and percentiles), ``repository``
(writes), ``queries`` (reads), ``params`` (query parameters), ``db`` (engines),
``migrate`` (Alembic, configured in code; scripts in ``migrations/``), ``writer``,
``http``, ``cli``, ``bench``.
"""
