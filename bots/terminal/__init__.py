"""The terminal front end."""

from .frontend import TerminalFrontEnd
from .session import chat, imagine_once

__all__ = ["TerminalFrontEnd", "chat", "imagine_once"]
