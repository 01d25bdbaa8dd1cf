"""The Litestar application: JSON API, HTML pages, support API, diagrams, operations.

`api.app.create_app(settings)` builds one application (and everything it
needs) per call; nothing here is created at import time.
"""
