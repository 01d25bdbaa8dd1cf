"""The HTTP application.

Litestar routes for the JSON API, the pages, the support API, the flows and
the operations endpoints.
"""
