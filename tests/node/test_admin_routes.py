"""The client API's administration routes from the side of a user without the `admin` right: a
contact point and an auditor of the owner's node each send every such request, well formed, and
get 403 as problem+json; nothing changes but the audit log. The same requests from the
administrator succeed, so the refusals are the right's and not the requests'.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from exchange.store.tables import webhooks
from tests.conftest import MakeFederation, Member
from tests.node.test_hostile_input import STATE_TABLES

OTHER = "ke-customs"  # a member of c2c, which nl-customs owns
OUTSIDE = "fr-customs"  # in the roster, not in c2c
NODES = {"nl-customs": ("NL", "customs"), OTHER: ("KE", "customs"), OUTSIDE: ("FR", "customs")}
C2C: dict[str, Any] = {"id": "c2c", "owner": "nl-customs", "agencies": ["customs"]}
C2C["members"] = {"nl-customs": ["read", "post", "admin"], OTHER: ["read", "post"]}
NEW_CHANNEL = {
    "id": "c2c-new",
    "title": "A new channel",
    "policy": {"agencies": ["customs"]},
    "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
}


def requests(hook: int) -> list[tuple[str, str, Any]]:
    """Every administration request, well formed: (method, path, body)."""
    return [
        ("GET", "/api/v1/webhooks", None),
        ("DELETE", f"/api/v1/webhooks/{hook}", None),
        ("POST", "/api/v1/channels/c2c/webhooks", {"url": "https://example.org/hook"}),
        ("POST", "/api/v1/channels", NEW_CHANNEL),
        ("POST", "/api/v1/channels/c2c/users", {"user": "officer", "assigned": False}),
        ("POST", "/api/v1/channels/c2c/rights", {"node": OTHER, "rights": ["read"]}),
        ("POST", "/api/v1/channels/c2c/invite", {"node": OUTSIDE, "rights": ["read"]}),
        ("POST", "/api/v1/channels/c2c/grant-history", {"node": OTHER}),
        ("POST", "/api/v1/channels/c2c/remove", {"node": OTHER}),
        ("POST", "/api/v1/channels/c2c/export", {"amber_strict": True}),
        ("POST", "/api/v1/channels/c2c/close", None),
    ]


async def state(member: Member) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of what a refusal must not change."""
    async with member.service.store.read() as conn:
        return {
            t.name: sorted(map(tuple, (await conn.execute(sa.select(t))).all()), key=repr)
            for t in [*STATE_TABLES, webhooks]
        }


@pytest.mark.parametrize("user", ["officer", "auditor"])
async def test_a_user_without_the_admin_right_changes_nothing(make_federation: MakeFederation, user: str) -> None:
    fed = await make_federation(nodes=NODES, channels=[C2C])
    nl = fed["nl-customs"]
    status, hook, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": "https://a.test/x"}
    )
    assert status == 201, hook
    hook = (await nl.api("GET", "/api/v1/webhooks", user="admin"))[1][0]
    before, position = await state(nl), nl.service.channels.state("c2c").pos
    for method, path, body in requests(hook["id"]):
        status, problem, ctype = await nl.api(method, path, user=user, body=body)
        assert (status, ctype) == (403, "application/problem+json"), (method, path, problem)
        assert "admin" in problem["detail"], (method, path, problem)
    assert await state(nl) == before and nl.service.channels.state("c2c").pos == position

    # The administrator's own requests go through, the last one closing the channel.
    for method, path, body in requests(hook["id"]):
        status, answer, _ = await nl.api(method, path, user="admin", body=body)
        assert status in (200, 201, 204), (method, path, answer)
