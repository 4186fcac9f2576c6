"""What the command line's parts share: who the local user is."""

from __future__ import annotations

import getpass
import os


def local_user() -> str:
    """The operator at this terminal (``IMAGINE_USER``, else the login name)."""
    try:
        return os.environ.get("IMAGINE_USER") or getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "local"
