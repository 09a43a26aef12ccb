"""Schemathesis hooks for tests/node/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

Schemathesis draws few distinct Idempotency-Key values, so it sends one key with different
bodies, which the node rightly refuses (422, as the Idempotency-Key draft says: a key names one
request). Each case that carries a well-formed key gets a fresh one instead; malformed keys stay,
to be refused. Reuse itself is tested where idempotency is (tests/test_delivery.py and the like).

A long poll (`/api/v1/follow`) may wait up to 25 s for a bulletin that never comes here: every
drawn `wait` becomes 0, so the run stays short (the waiting is tested in tests/service/test_follow.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

from exchange.service.posting import KEY_PATTERN


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and KEY_PATTERN.fullmatch(key.strip('"')):
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    if isinstance(case.query, dict) and isinstance(case.query.get("wait"), int) and case.query["wait"] > 0:
        case.query["wait"] = 0
    return case
