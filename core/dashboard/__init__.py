"""The operators' and community admins' dashboard under ``/admin`` (see ``views``)."""

from .auth import DashboardAuth, Session
from .views import add_dashboard

__all__ = ["DashboardAuth", "Session", "add_dashboard"]
