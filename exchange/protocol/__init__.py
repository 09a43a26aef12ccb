"""Protocol rules, sans I/O: envelope build and verify (v1, and v2 under channel epoch keys), receipts,
rosters, channel state."""
