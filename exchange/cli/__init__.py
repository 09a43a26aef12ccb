"""The `exchange` command line."""
