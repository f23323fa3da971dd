"""Running the service as a process: `create_app` (the ASGI app), our uvicorn runner and its protocol subclasses,
the worker supervisor, signal handling under other ASGI servers, and the dev state file.

Every reach into uvicorn's private parts is in `uvicorn_protocols`, and into asyncio's in `asyncio_signals`.
May import: everything in notifier except notifier.cli.
"""
