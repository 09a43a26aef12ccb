"""A conformance kit: checks of the golden vectors that import nothing from `exchange`.

It reads only the vector files and the constants that docs/protocol.md and docs/audit.md state,
and checks them with hashlib, `cryptography`'s Ed25519, `rfc8785` and an RFC 9162 Merkle
verifier written out here. Another implementation runs it against its own files by pointing
EXCHANGE_VECTORS at a directory holding them (docs/audit.md, "Conformance").
"""
