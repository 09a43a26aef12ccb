"""What the HTTP adapters share (the node's API routes and the console): typed app keys, the
error-to-status table, and request parsing."""
