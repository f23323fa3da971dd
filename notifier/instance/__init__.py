"""One running instance: `Node` wires the broker, hub, token verifier, control plane and sessions, and owns
their start, connection limits and graceful drain; the event-loop lag watch it runs.

May import: notifier.cluster and everything below it.
"""
