"""Real servers for tests and benchmarks: PostgreSQL, SMTP, the service itself."""
