"""Protocol rules, sans I/O: envelope build and verify, receipts, rosters, channel state."""
