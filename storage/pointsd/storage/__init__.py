"""Storage: Redis (hot path, Lua) and PostgreSQL (durable ledger).

Depends on `service.domain` (plain types) and nothing else of `service`.
"""
