"""The application layer: every rule that needs state and every query, for all adapters.

The HTTP routes (`exchange.node`), the console (`exchange.web`) and the CLI call this layer; it
alone imports the store's tables. Partners are reached through a `PeerTransport` given to it.
"""
