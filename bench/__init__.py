"""How many browsers one notifier process can feed, side by side with what a user would pick instead."""
