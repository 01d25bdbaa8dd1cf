"""Accounts and sign-in.

The accounts, their passwords and policy, link tokens, sessions, and the
sign-in slow-down.
"""
