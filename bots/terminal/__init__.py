"""The terminal front end."""

from imagine_bot.bots.terminal.frontend import TerminalFrontEnd
from imagine_bot.bots.terminal.session import chat, imagine_once

__all__ = ["TerminalFrontEnd", "chat", "imagine_once"]
