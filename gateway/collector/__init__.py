"""Collection: what to read from each meter and when, with the ledger that proves it was read."""
