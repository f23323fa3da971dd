"""The HTTP surface: the routes (WebSocket endpoint, publish, server API, health, metrics, docs and the dev demo),
the event publisher behind them, the server API's commands, and the JSON error answers.

May import: notifier.observability and everything below it.
"""
