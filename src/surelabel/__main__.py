"""``python -m surelabel`` runs the command line."""

from surelabel.cli import entry

entry()
