"""Must show 2: schemathesis, driven by the node's own OpenAPI document, against a live node's
client, audit and federation APIs, with every check: no server error, no schema violation.

The client API is called with a bearer token of the role each route is for (the officer's posts
go to the channel it is assigned to, so that bulletins are really posted), the federation API with
a partner's roster certificate. The examples per operation are bounded, so the test takes well
under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MakeFederation, Member

MAX_EXAMPLES = 12  # per operation and phase
POSTS = r"^/api/v1/channels/\{channel\}/(bulletins|bulletins/batch|rfis|stix)$"
STATEFUL = 'expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]'


def _toml(value: Any) -> str:
    return json.dumps(value)  # a JSON string, number, boolean or array is the same in TOML


def config_file(folder: Path, nl: Member, partner: Member, report: Path) -> Path:
    """A schemathesis configuration: who calls which routes, how many examples, which statuses."""
    keys, partner_keys = nl.config.keys_dir, partner.config.keys_dir
    roles = [
        (
            "officer",
            r"^/api/v1/(whoami|channels|channels/\{channel\}|bulletins.*|bulletin-ids|follow|peers)$",
        ),
        ("admin", r"^/api/v1/channels(/\{channel\}/(users|accept|invite|rights|remove|grant-history|close|export))?$"),
        ("auditor", r"^/api/v1/audit/"),
    ]
    lines = [
        f"tls-verify = {_toml(str(keys / 'tls.crt'))}",
        # One worker: with two, hypothesis describes strategies with ast.parse in two threads at
        # once, which CPython 3.11 can fail with "AST constructor recursion depth mismatch".
        "workers = 1",
        "request-timeout = 20",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        'database = "none"',
        "[checks]",
        "enabled = true",
        "[checks.negative_data_rejection]",
        # 413: a generated body larger than the route takes is refused before it is parsed.
        'expected-statuses = ["400", "401", "403", "404", "405", "409", "413", "422", "429"]',
        "[reports.junit]",
        f"path = {_toml(str(report))}",
    ]
    # Webhooks are left out: a registered URL is one the node then POSTs to, and this test must not
    # send the node to hosts beyond this machine (tests/node/test_webhooks.py uses a local receiver).
    lines += ["[[operations]]", 'include-path-regex = "webhooks"', "enabled = false"]
    # Most specific first: the officer's posts (one, or a batch), and the channel's requests for
    # information and STIX export, go to the channel the officer works in.
    lines += [
        "[[operations]]",
        f"include-path-regex = {_toml(POSTS)}",
        f"headers = {{ Authorization = {_toml('Bearer ' + nl.tokens['officer'])} }}",
        "[operations.parameters]",
        '"path.channel" = "c2c"',
        # Nor can a schema hold the author's indicator rules (exchange.protocol.indicators): an air
        # waybill's check digit, IATA airport codes, HS chapters are refused (422) by those rules.
        "[operations.checks.positive_data_acceptance]",
        STATEFUL,
    ]
    for user, regex in roles:
        lines += [
            "[[operations]]",
            f"include-path-regex = {_toml(regex)}",
            f"headers = {{ Authorization = {_toml('Bearer ' + nl.tokens[user])} }}",
        ]
        if user == "admin":
            # Nor can it say what the channel's log allows now: inviting a member, changing a
            # closed channel, a policy that excludes the node, assigning a user who is no contact
            # point are refused (422) by the rules of the log, as tests/test_channels.py shows.
            lines += ["[operations.checks.positive_data_acceptance]", STATEFUL]
    lines += [
        "[[operations]]",
        'include-path-regex = "^/fed/"',
        f"request-cert = {_toml(str(partner_keys / 'tls.crt'))}",
        f"request-cert-key = {_toml(str(partner_keys / 'tls.key'))}",
        # A schema cannot say which signatures verify: a well-formed envelope, event, receipt,
        # acceptance or checkpoint that is not signed by its author is refused (422) all the same.
        "[operations.checks.positive_data_acceptance]",
        STATEFUL,
    ]
    path = folder / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    make_federation: MakeFederation, tmp_path: Path
) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    report = tmp_path / "junit.xml"
    config = config_file(tmp_path, nl, ke, report)
    cli = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        "--config-file",
        str(config),
        "run",
        nl.config.endpoint + "/api/v1/openapi.json",
        "--checks",
        "all",
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).with_name("schemathesis_hooks.py"))},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.log").write_text(text)
    summary = text[text.rfind("=== SUMMARY ===") :]
    print(summary)
    assert proc.returncode == 0, f"schemathesis failed (the whole log: {tmp_path / 'schemathesis.log'}):\n{summary}"
