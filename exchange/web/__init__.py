"""The web console: server-rendered pages for contact points, auditors and administrators.

It is served under /console/ by the node's own aiohttp app (`mount`, called by the composition
root `exchange.app`), with jinja2 templates, one stylesheet and one small script (the live inbox,
static/live.js; every page works without it). It is an adapter like
the JSON API: every rule ("may read / may post here" is `service.access`) and every query is in
the application layer (`exchange.service`), so it enforces exactly the API's rules.
"""

from exchange.web.console import mount

__all__ = ["mount"]
