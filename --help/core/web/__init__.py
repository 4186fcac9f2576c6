"""The bot's own web server: callbacks, /healthz, /metrics, /refs and the admin dashboard."""
