"""The tamper-evident audit log: entry kinds, checkpoints, witnessing, verification and tracing.

Pure (no I/O, no clock): `events` (one typed model per kind of entry, and the kind names),
`note` (C2SP signed notes), `checkpoint` (C2SP checkpoints and cosignatures), `tree` (proofs
from stored subtree hashes), `log` (verifying a log or an export bundle, offline), `trace` (a
bulletin's chain of custody across nodes), `keeper` (stored checkpoints, resuming, the records
of evidence and exports) and `witness` (what a witness accepts, split views, the messages).
The shell that keeps this node's log and witnesses its partners is `exchange.service.audit`.
"""
