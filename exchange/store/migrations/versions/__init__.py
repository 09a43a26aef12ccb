"""One module per schema revision, oldest first: v0001 is release 0.1.0's schema."""
