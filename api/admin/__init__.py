"""The admin room: what the applications using the service do with its accounts (role admin)."""
