"""Everything that refuses: per-address connection limits and the unauthenticated budget (gate), the per-instance
and per-user connection counts (admission), per-user subscribe budgets, the one token bucket behind every
rate (tokenbucket: a connection's frames, an address's new connections, a user's subscribes), the pacing of new
sockets' first requests, and the allowed origins.

Each refusal has a documented answer (an HTTP status with JSON, a close code or an error frame).
May import: notifier.formats and the leaves (settings, logs, stats).
"""
