"""The review service: HTTP API and review queue web pages (``surelabel serve``)."""

from surelabel.server.app import create_app
from surelabel.server.context import Settings

__all__ = ["Settings", "create_app"]
