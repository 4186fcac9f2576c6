# importing bots.discord first keeps discord.py's audioop DeprecationWarning out of the test run
import imagine_bot.bots.discord  # noqa: F401
