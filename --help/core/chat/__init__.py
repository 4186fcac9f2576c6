"""Platform-neutral chat: command parsing, the text commands, and every message users read."""
