"""Operating the bot: doctor checks, operator alerts, logging."""
