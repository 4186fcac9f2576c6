"""The Slack front end: ``/imagine``, Reroll / Delete buttons and the App Home tab (see docs/slack.md)."""

from imagine_bot.bots.slack.service import SlackService

__all__ = ["SlackService"]
