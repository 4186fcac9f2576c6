"""The imagine-bot command line: the bot, the terminal, and the operators' admin commands."""
