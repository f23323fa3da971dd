"""Instances talking to each other over the control plane (`<exchange>.control`): the `ControlPlane` protocol
and its factory (control), the commands' wire format (codec), their running on an instance (runner), the two
planes (local_control for a single instance, amqp_control over RabbitMQ), and the hand-over of a parked session
to the instance where it resumes (handover).

May import: notifier.connection and everything below it.
"""
