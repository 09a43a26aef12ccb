"""The audit side of the application layer: this node's log (`keeper`), its witnessing of
partners (`witness`), and the questions the audit API and the console ask (`service`).

The pure rules and formats are `exchange.audit`; this package adds the store and the partners.
"""
