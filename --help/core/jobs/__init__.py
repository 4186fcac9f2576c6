"""The job pipeline: the job model, orchestrator, admission, outbox, leases and the callback relay."""
