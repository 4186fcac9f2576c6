"""What a store raises besides the core's errors, the same for every database (SQLite and PostgreSQL)."""

from __future__ import annotations


class DuplicateRequest(Exception):
    """A job with this request's ``dedupe_key`` exists already (the same request arrived twice at once):
    nothing was written."""


class StoreClosed(Exception):
    """The database was closed (the process is stopping): nothing was read or written."""
