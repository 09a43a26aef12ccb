"""exchange: a federated, end-to-end encrypted exchange of customs and aviation-security bulletins."""

__version__ = "0.1.0"
