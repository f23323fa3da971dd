"""Everything that refuses: per-address connection limits and the unauthenticated budget (gate), the per-instance
and per-user connection counts (admission), per-user subscribe budgets, the token bucket of a connection's
frames, the pacing of new sockets' first requests, and the allowed origins.

Each refusal has a documented answer (an HTTP status with JSON, a close code or an error frame).
May import: notifier.formats and the leaves (settings, logs, stats).
"""
