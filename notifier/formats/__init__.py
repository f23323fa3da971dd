"""Pure formats: the grammar of topics and grants, events and their ids, the client protocol's frames, the
WebSocket wire encoding, the HTTP stream's server-sent events and the table of close codes.

Owns no I/O and no state beyond its arguments. May import: the standard library, pydantic and orjson, and
nothing else of notifier.
"""
