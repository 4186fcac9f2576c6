"""imagine-bot: ``/imagine`` for Slack and Discord through the ModKie gateway.

The code lives in the repository's top-level ``core/`` (the platform-neutral core) and ``bots/`` (the
front ends); the package maps them to ``imagine_bot.core`` and ``imagine_bot.bots`` so that an installed
wheel adds one distinctive top-level name to site-packages, never ``core`` or ``bots``.
"""
