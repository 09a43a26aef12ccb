"""A password set by any path ends the user's console sessions (docs/console.md: "A password
change ends the user's other sessions"): an administrator resetting a compromised officer's
password with `exchange users password`, on the node's host, cuts off whoever signed in with the
old one. Before, only the console's own password forms ended sessions, and a stolen session
outlived the CLI's reset for up to its 8 hours. Found by a read-only review; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.conftest import MakeFederation, console_session

PASSWORD = "correct horse battery staple"


async def test_a_password_reset_from_the_cli_ends_the_users_console_sessions(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    for user in ("officer", "admin"):
        await nl.service.users.set_password(user, PASSWORD, actor="test")
    async with console_session(nl, "officer", PASSWORD) as attacker, console_session(nl, "admin", PASSWORD) as other:
        async with attacker.get("/console/channels", allow_redirects=False) as resp:
            assert resp.status == 200
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "exchange"),
            *("users", "password", "--node", str(fed.folder / "nl-customs.toml"), "officer", "--generate"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        async with attacker.get("/console/channels", allow_redirects=False) as resp:
            assert resp.status == 303, f"the session outlived the password reset: {resp.status}"
        async with other.get("/console/channels", allow_redirects=False) as resp:
            assert resp.status == 200  # another user's session is not touched
