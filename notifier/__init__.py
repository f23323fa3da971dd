"""notifier: pushes events published to RabbitMQ to authenticated WebSocket clients."""

__version__ = "0.1.0"
