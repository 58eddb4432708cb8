async def test_template_has_schema(conn):
    tables = {r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"ledger_account", "ledger_transfer", "ledger_entry", "txn", "card"} <= tables
