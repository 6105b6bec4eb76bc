"""Corral's monitor: live pages, the REST API under /api/v1 and /metrics, served by gunicorn.

    gunicorn 'web:create_app()'      (or `corral web`)
"""

from web.app import create_app

__all__ = ["create_app"]
