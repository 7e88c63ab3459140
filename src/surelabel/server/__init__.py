"""The review service: HTTP API, review and admin pages (``surelabel serve``)."""

from surelabel.server.app import create_app
from surelabel.server.context import Settings
from surelabel.server.review_settings import ReviewSettings

__all__ = ["ReviewSettings", "Settings", "create_app"]
