"""The review service: HTTP API and review queue web pages (``surelabel serve``)."""

from surelabel.server.app import Settings, create_app

__all__ = ["Settings", "create_app"]
