"""The node: its service logic, federation and client HTTP APIs, outbox senders and TLS."""
