"""The password-recovery flow's side of the world: accounts, passwords, tokens, mail, login.

`flows/password_recovery.py` is the state machine; this package holds what its
events need from outside the machine and the side effects they cause.
"""
