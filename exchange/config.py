"""Node configuration: one frozen object read from the node's TOML file; the only reader of os.environ."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.errors import ConfigError
from exchange.model import AgencyKind, NodeIdStr, Right, first_error

ENV_PREFIX = "EXCHANGE_"


class ChannelSpec(BaseModel):
    """A channel that the sample federation's provisioning creates, signed by its owner."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    owner: str
    title: str
    purpose: str = ""
    agencies: list[AgencyKind]
    tlp: str = "AMBER"
    members: dict[str, list[Right]]


class FederationConfig(BaseModel):
    """The federation file: where shared key material lives and which channels exist at start."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    path: Path
    keys_dir: Path
    data_dir: Path
    nodes: list[Path]
    channels: list[ChannelSpec] = []

    @property
    def roster_path(self) -> Path:
        return self.keys_dir / "roster.json"

    @property
    def authority_dir(self) -> Path:
        return self.keys_dir / "federation"

    @property
    def channels_dir(self) -> Path:
        return self.keys_dir / "channels"

    @classmethod
    def load(cls, path: Path) -> FederationConfig:
        """Read `federation.toml` (or the folder that holds it)."""
        if path.is_dir():
            path = path / "federation.toml"
        raw = _read_toml(path)
        base = path.parent
        fed = raw.get("federation", {})
        try:
            return cls(
                name=fed.get("name", "exchange"),
                path=path.resolve(),
                keys_dir=(base / fed.get("keys_dir", "../keys")).resolve(),
                data_dir=(base / fed.get("data_dir", "../var")).resolve(),
                nodes=sorted(p.resolve() for p in base.glob("*.toml") if p.name != path.name),
                channels=raw.get("channel", []),
            )
        except ValidationError as exc:
            raise ConfigError(f"{path}: {first_error(exc)}") from exc


class TlogWitnessConfig(BaseModel):
    """A C2SP tlog-witness that this node's log asks to co-sign (docs/operations.md, "C2SP witnesses"):
    its submission prefix (`<url>/add-checkpoint` is POSTed to) and its verifier key (type 0x04)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]
    vkey: Annotated[str, Field(min_length=1, max_length=512)]
    ca_file: Path | None = None  # the witness's certificate authority, if not the system's


class TlogLogConfig(BaseModel):
    """A foreign C2SP log that this node witnesses: its checkpoints' origin line and its note verifier
    key (type 0x01); the key name may differ from the origin (`go.sum database tree`, `sum.golang.org`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    origin: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\n]+$")]
    vkey: Annotated[str, Field(min_length=1, max_length=512)]


class NodeConfig(BaseModel):
    """Everything one node needs to run. Paths are absolute once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: NodeIdStr
    name: str
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    agency: AgencyKind
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]
    public_host: str = "127.0.0.1"
    keys_dir: Path
    roster_path: Path
    authority_key_path: Path
    channels_dir: Path
    database_url: str
    # PostgreSQL: connections this node (each of its worker processes) keeps open at most; budget
    # workers x this under the server's max_connections (docs/operations.md, "PostgreSQL").
    database_connections: Annotated[int, Field(ge=2, le=500)] = 15
    # Items per push at most (and at most 32 MiB). What a push costs whatever its size (the request,
    # its receipt statement's signature, the write jobs of its send and delivery, two audit entries)
    # is shared by more bulletins under a backlog: 100 against 500 cost about 8% more CPU per
    # bulletin end to end (bench/README.md, throughput.py). A short queue goes as it is.
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 500
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 60.0
    request_timeout_seconds: float = 30.0
    catchup_interval_seconds: float = 300.0
    # Members each catch-up sweep asks per channel, in turn (docs/protocol.md, 11.6): the sweep's cost
    # does not grow with the channel.
    catchup_peers: Annotated[int, Field(ge=1, le=1000)] = 4
    # Partners a node asks for newer roster versions every 10 minutes, and tells of a version it took
    # from a peer (docs/protocol.md, 6a.11): chosen at random; a version imported here goes to all.
    gossip_peers: Annotated[int, Field(ge=1, le=1000)] = 4
    audit_checkpoint_seconds: float = 60.0
    # Witnesses per log, chosen from the roster (docs/operations.md, "Witness sets"): a federation-wide
    # setting, the same on every node, as each computes every log's witnesses from it.
    audit_witnesses: Annotated[int, Field(ge=1, le=64)] = 5
    # Finished outbox rows (delivered, rejected, cancelled) are deleted this long after they finish
    # (docs/operations.md, "Retention"); the audit log keeps what was sent and delivered.
    outbox_retention_days: Annotated[float, Field(ge=0, le=36500)] = 7.0
    # Worker processes that seal posts and check and open received envelopes, each holding the
    # node's private keys (docs/operations.md, "Crypto workers"); 0: all on the event loop.
    crypto_workers: Annotated[int, Field(ge=0, le=64)] = 1
    # Announce that this node takes envelope v2 (docs/protocol.md, 15.12): channels whose readers
    # all do are switched to channel epoch keys. False (the default in this release): partners
    # keep sending it v1; it still accepts v2.
    envelope_v2: bool = False
    # With envelope_v2: once a channel's state has held still this long, its owner makes the epoch
    # for the state's readers and each reader fetches it (after a random delay of up to 30 s more),
    # so that the first bulletin after a change of readers does not wait for that work
    # (docs/protocol.md, 15.1 "When"). 0: epochs are made and fetched only when a bulletin needs them.
    epoch_prefetch_seconds: Annotated[float, Field(ge=0)] = 5.0
    # What one client may cost the node (docs/operations.md, "Limits, timeouts and sign-in").
    # Timeouts: a request's line and headers, from their first byte (or the connection's opening);
    # its body, in all and between two reads; an idle connection between two requests.
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    read_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    keepalive_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    # How long this node keeps an idle connection to a partner for its next request (its client's
    # side of keep-alive): longer than the audit rounds (60 s), so that a node's witnesses are asked
    # on the same connection each round, and below the partners' keepalive_timeout_seconds, so that
    # they do not close it first. A new mutual-TLS connection costs both sides about 2.5 ms of CPU
    # in all (bench/tls_reuse.py).
    peer_keepalive_seconds: Annotated[float, Field(gt=0)] = 90.0
    max_header_bytes: Annotated[int, Field(ge=1024, le=65536)] = 8190  # the request line, and each header
    max_head_bytes: Annotated[int, Field(ge=4096)] = 65536  # the request line and all headers together
    # Open connections: per client address (an IPv6 /64), per partner node, and in all for clients
    # without a roster certificate (partners are counted apart, so a flood never shuts them out).
    max_connections_per_address: Annotated[int, Field(ge=1)] = 128
    max_connections_per_peer: Annotated[int, Field(ge=1)] = 32
    max_connections: Annotated[int, Field(ge=1)] = 1024
    # Request rates (token buckets: a sustained rate per second and a burst), per API token or
    # console session, per partner node, and per client address for requests without a known one.
    rate_per_token: Annotated[float, Field(gt=0)] = 200.0
    burst_per_token: Annotated[int, Field(ge=1)] = 2000
    rate_per_peer: Annotated[float, Field(gt=0)] = 200.0
    burst_per_peer: Annotated[int, Field(ge=1)] = 2000
    rate_per_address: Annotated[float, Field(gt=0)] = 20.0
    burst_per_address: Annotated[int, Field(ge=1)] = 200
    # Audit of refused requests: each interval, up to `refusals_exact_per_address` refusals of
    # unauthenticated clients per address (and `refusals_exact_total` in all) get their own entry;
    # the rest are counted in one `requests.refused` entry per address (at most
    # `refusals_tracked_addresses` of them, the others as "other").
    refusals_interval_seconds: Annotated[float, Field(gt=0)] = 60.0
    refusals_exact_per_address: Annotated[int, Field(ge=0)] = 10
    refusals_exact_total: Annotated[int, Field(ge=0)] = 100
    refusals_exact_per_caller: Annotated[int, Field(ge=0)] = 600  # an accountable user's or partner's own entries
    refusals_tracked_addresses: Annotated[int, Field(ge=1)] = 1000
    # C2SP tlog-witness (docs/audit.md, section 4): witnesses this node's log pushes its checkpoints
    # to, and foreign logs whose checkpoints this node co-signs at POST /c2sp/tlog-witness/add-checkpoint.
    tlog_witnesses: tuple[TlogWitnessConfig, ...] = ()
    tlog_logs: tuple[TlogLogConfig, ...] = ()

    @property
    def endpoint(self) -> str:
        return f"https://{self.public_host}:{self.port}"

    @classmethod
    def load(cls, path: Path, environ: dict[str, str] | None = None) -> NodeConfig:
        """Read a node file; EXCHANGE_* environment variables override its values."""
        toml = _read_toml(path)
        if not isinstance(toml.get("node"), dict):  # federation.toml, a channel file, another program's file
            raise ConfigError(f"{path}: not a node file (it has no [node] table)")
        raw = toml["node"]
        fed = FederationConfig.load(path.parent / raw.pop("federation", "federation.toml"))
        values: dict[str, Any] = {
            "keys_dir": fed.keys_dir / str(raw.get("id", "")),
            "roster_path": fed.roster_path,
            "authority_key_path": fed.authority_dir / "authority.pub",
            "channels_dir": fed.channels_dir,
            "database_url": f"sqlite+aiosqlite:///{fed.data_dir / (str(raw.get('id', 'node')) + '.db')}",
            **raw,
        }
        env = os.environ if environ is None else environ
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        try:
            return cls.model_validate(values)
        except ValidationError as exc:  # the first complaint, and how many more: one line
            more = exc.error_count() - 1
            raise ConfigError(f"{path}: {first_error(exc)}" + (f" (and {more} more)" if more else "")) from exc

    @classmethod
    def for_tests(cls, tmp_path: Path, node_id: str, **overrides: Any) -> NodeConfig:
        """A node whose files all live under `tmp_path`, on an ephemeral port."""
        values: dict[str, Any] = {
            "id": node_id,
            "name": f"Test administration {node_id}",
            "country": "NL",
            "agency": "customs",
            "port": 0,
            "keys_dir": tmp_path / "keys" / node_id,
            "roster_path": tmp_path / "keys" / "roster.json",
            "authority_key_path": tmp_path / "keys" / "federation" / "authority.pub",
            "channels_dir": tmp_path / "keys" / "channels",
            "database_url": f"sqlite+aiosqlite:///{tmp_path / (node_id + '.db')}",
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 1.0,
            "crypto_workers": 0,
            **overrides,
        }
        return cls.model_validate(values)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"no such file: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
