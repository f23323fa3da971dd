"""Instances talking to each other over the control plane (`<exchange>.control`): the command codec and its
runners (local and over AMQP), and the hand-over of a parked session to the instance where it resumes.

May import: notifier.connection and everything below it.
"""
