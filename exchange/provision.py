"""Set up a federation from its folder: authority key, node keys, signed roster, channels, users.

Every step keeps what exists, so running it again changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from exchange.clock import timestamp
from exchange.config import ChannelSpec, FederationConfig, NodeConfig
from exchange.crypto import SigningKey, b64d, b64e, canonical_json, strict_loads
from exchange.crypto.passwords import new_password
from exchange.errors import ConfigError
from exchange.keystore import NodeKeyFiles, read_file, write_private, write_public
from exchange.model import ChannelEvent, NodeId, Roster, SignedRoster
from exchange.protocol.channel import ChannelState, apply_event, sign_acceptance, sign_event
from exchange.protocol.roster import Federation, sign_roster
from exchange.service.users import add_user, assign, list_users, set_password
from exchange.store import Store

SAMPLE_USERS = (("officer", "contact-point"), ("auditor", "auditor"), ("admin", "admin"))


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.created.append(what)


def authority_key(fed: FederationConfig, report: InitReport) -> SigningKey:
    key_path = fed.authority_dir / "authority.key"
    if key_path.exists():
        return SigningKey(b64d(read_file(key_path).decode().strip()))
    key = SigningKey.generate()
    write_private(key_path, b64e(key.private_bytes()).encode() + b"\n")
    write_public(fed.authority_dir / "authority.pub", b64e(key.verify_key.raw).encode() + b"\n")
    report.add(f"federation authority key {key.kid}")
    return key


def roster_entry(cfg: NodeConfig) -> dict[str, object]:
    files = NodeKeyFiles(cfg.keys_dir)
    public = json.loads(read_file(cfg.keys_dir / "public.json"))
    return {
        "id": cfg.id,
        "name": cfg.name,
        "country": cfg.country,
        "agency": cfg.agency,
        "endpoint": cfg.endpoint,
        "signing_key": public["signing_key"],
        "signing_kid": public["signing_kid"],
        "encryption_key": public["encryption_key"],
        "encryption_kid": public["encryption_kid"],
        "tls_cert": files.tls_cert_pem(),
        "tls_pin": public["tls_pin"],
    }


def write_roster(
    fed: FederationConfig, nodes: list[NodeConfig], authority: SigningKey, report: InitReport
) -> Federation:
    """Sign a new roster version if the node list or any key changed; else keep the current one."""
    entries = [roster_entry(cfg) for cfg in sorted(nodes, key=lambda c: c.id)]
    version = 1
    if fed.roster_path.exists():
        current = SignedRoster.model_validate(strict_loads(read_file(fed.roster_path)))
        if [
            n.model_dump(mode="json") for n in current.roster.nodes
        ] == entries and current.roster.federation == fed.name:
            return Federation.verify(current, authority.verify_key)
        version = current.roster.version + 1
    roster = Roster.model_validate(
        {
            "v": 1,
            "federation": fed.name,
            "version": version,
            "issued": timestamp(),
            "authority_kid": authority.kid,
            "nodes": entries,
        }
    )
    signed = sign_roster(roster, authority)
    write_public(fed.roster_path, json.dumps(signed.model_dump(mode="json"), indent=2).encode() + b"\n")
    report.add(f"roster version {version} with {len(entries)} nodes")
    return Federation.verify(signed, authority.verify_key)


def write_channels(
    fed_cfg: FederationConfig, fed: Federation, nodes: dict[str, NodeConfig], report: InitReport
) -> None:
    for spec in fed_cfg.channels:
        path = fed_cfg.channels_dir / f"{spec.id}.json"
        if path.exists():
            continue
        owner = nodes.get(spec.owner)
        if owner is None:
            raise ConfigError(f"channel {spec.id}: owner {spec.owner} is not a node of this federation")
        for member in spec.members:
            fed.node(member)
        events = channel_log(spec, fed, {n: NodeKeyFiles(c.keys_dir).load().signing for n, c in nodes.items()})
        write_public(path, canonical_json([e.model_dump(mode="json") for e in events]) + b"\n")
        report.add(f"channel {spec.id} owned by {spec.owner} with {len(spec.members)} members")


def channel_log(spec: ChannelSpec, fed: Federation, keys: dict[str, SigningKey]) -> list[ChannelEvent]:
    """The log a real owner would build: create, then an invitation and a signed acceptance per member.

    Every event is checked as a receiver would, so a channel that breaks its own policy is refused.
    """
    owner_key = keys[spec.owner]
    events: list[ChannelEvent] = []
    state: ChannelState | None = None

    def add(change: dict[str, object]) -> ChannelState:
        event = sign_event(
            channel=spec.id,
            owner=spec.owner,
            pos=len(events),
            prev=state.hash if state else None,
            at=timestamp(),
            change=change,
            key=owner_key,
        )
        events.append(event)
        return apply_event(state, event, fed)

    state = add(
        {
            "type": "create",
            "title": spec.title,
            "purpose": spec.purpose,
            "policy": {"agencies": spec.agencies},
            "default_handling": {"tlp": spec.tlp, "no_onward_sharing": False},
            "ends": None,
        }
    )
    for node, rights in spec.members.items():
        if node == spec.owner:
            continue
        state = add({"type": "invite", "node": node, "rights": rights})
        acceptance = sign_acceptance(spec.id, node, state.invited[NodeId(node)][1], keys[node])
        state = add({"type": "accept", "acceptance": acceptance.model_dump(mode="json")})
    return events


async def sample_users(cfg: NodeConfig, channels: list[str], report: InitReport, *, passwords: bool = False) -> None:
    """A contact point (working in every channel of the node), an auditor and an administrator,
    each with a token file (0600), and with `passwords` a console password file (0600) too."""
    store = await Store.open(cfg.database_url, node=cfg.id, connections=cfg.database_connections)
    try:
        found = await list_users(store)
        existing = {u.name for u in found}
        disabled = {u.name for u in found if u.disabled_at is not None}
        for name, role in SAMPLE_USERS:
            if name in existing:
                continue
            token = await add_user(store, name, role, actor="federation-init")
            write_private(cfg.keys_dir / "tokens" / name, token.encode() + b"\n", force=True)
            report.add(f"user {name} ({role}) at {cfg.id}")
            if role == "contact-point":
                for channel in channels:
                    await assign(store, name, channel, assigned=True, actor="federation-init")
        for name, _ in SAMPLE_USERS:
            path = cfg.keys_dir / "passwords" / name
            # also for users made before the console existed; never for a disabled one
            if passwords and not path.exists() and name not in disabled:
                password = new_password()
                await set_password(store, name, password, actor="federation-init")
                write_private(path, password.encode() + b"\n", force=True)
                report.add(f"console password for {name} at {cfg.id}")
    finally:
        await store.close()


async def init_federation(path: Path, *, with_users: bool = True, sample_passwords: bool = False) -> InitReport:
    """Create whatever is missing of the federation in `path`.

    `sample_passwords` also gives the sample users console passwords; it is off by default
    because each argon2 hash costs about 70 ms, which tests that never sign in need not pay.
    """
    fed_cfg = FederationConfig.load(path)
    report = InitReport()
    nodes = [NodeConfig.load(p) for p in fed_cfg.nodes]
    if not nodes:
        raise ConfigError(f"no node files in {fed_cfg.path.parent}")
    authority = authority_key(fed_cfg, report)
    for cfg in nodes:
        files = NodeKeyFiles(cfg.keys_dir)
        if not files.exists():
            files.generate(cfg.id)
            report.add(f"keys for {cfg.id}")
    fed = write_roster(fed_cfg, nodes, authority, report)
    write_channels(fed_cfg, fed, {c.id: c for c in nodes}, report)
    fed_cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the nodes' databases (Store.open)
    if with_users:
        for cfg in nodes:
            mine = [c.id for c in fed_cfg.channels if cfg.id in c.members]
            await sample_users(cfg, mine, report, passwords=sample_passwords)
    return report
