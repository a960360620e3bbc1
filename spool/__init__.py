"""The durable store on flash (SQLite, WAL, synchronous=FULL): readings, ledger, alarms, outbox."""
