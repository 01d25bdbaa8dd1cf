"""Support: keys and roles, the audit log, and what agents see of attempts and may do to them."""
