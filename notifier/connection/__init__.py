"""One client connection from login to close: token verification (auth), the session's state machine and
request handlers (session), taking a session over on resume (resume), its bounded send queue (outbox) and the
writer that drains it (senders), the HTTP stream's connection and the node's streams (stream), the replay
history, the hub (topic -> local sessions, first bind and last unbind) and the directory of parked sessions.

May import: notifier.broker, notifier.limits, notifier.formats, and the leaves (settings, logs, stats).
"""
