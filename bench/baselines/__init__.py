"""The systems a user would pick instead of notifier, each small and written the way its docs suggest."""
