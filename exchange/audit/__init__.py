"""The tamper-evident audit log: checkpoints, witnessing, verification and tracing.

Pure (no I/O, no clock): `note` (C2SP signed notes), `checkpoint` (C2SP checkpoints and
cosignatures), `tree` (proofs from stored subtree hashes), `log` (verifying a log or an export
bundle), `trace` (a bulletin's chain of custody across nodes).
Shell: `keeper` (this node's own log: follow the table, sign, serve) and `witness` (co-sign
partners' logs, ask partners to co-sign ours, detect split views).
"""
