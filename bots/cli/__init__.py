"""The imagine-bot command line: the bot, the terminal, and the operators' admin commands.

``main`` (the ``imagine-bot`` entry point) builds the parser; ``admin`` holds the operators' commands
(credits, budgets, jobs), ``doctor`` the front ends' checks, ``common`` what both sides share.
"""

from imagine_bot.bots.cli.main import hoist_global_options, main

__all__ = ["hoist_global_options", "main"]
