"""The web console: server-rendered pages for contact points, auditors and administrators.

It is served under /console/ by the node's own aiohttp app (`mount`), with jinja2 templates, one
stylesheet and no script, and it works through the same `NodeService`, `ChannelBook` and audit
objects as the JSON API, so it enforces exactly the API's rules.
"""

from exchange.web.console import mount

__all__ = ["mount"]
