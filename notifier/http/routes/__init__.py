"""Thin HTTP and WebSocket routes; the work happens in the node, hub and sessions."""
