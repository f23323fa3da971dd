"""The HTTP surface: the routes (WebSocket endpoint, HTTP stream and its commands, publish, server API, health,
metrics, docs and the dev demo), the event publisher behind them, the server API's and the streams' commands, and
the JSON error answers.

May import: notifier.observability and everything below it.
"""
