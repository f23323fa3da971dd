"""The ASGI entry point: `notifier.app:create_app` is the factory any ASGI server can build the service with
(`uvicorn --factory notifier.app:create_app`). The app itself is assembled in `notifier.runtime.app`."""

from notifier.runtime.app import create_app, settings_from_environment

__all__ = ["create_app", "settings_from_environment"]
