"""The operators' and community admins' dashboard under ``/admin`` (see ``views``)."""

from imagine_bot.core.web.dashboard.auth import DashboardAuth, Session
from imagine_bot.core.web.dashboard.views import add_dashboard

__all__ = ["DashboardAuth", "Session", "add_dashboard"]
