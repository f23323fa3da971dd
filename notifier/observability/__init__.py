"""What an operator reads: the Prometheus collector over one node, the separate metrics port, the metrics of
a group of worker processes, and process-id checks for their snapshot files.

May import: notifier.instance and everything below it.
"""
