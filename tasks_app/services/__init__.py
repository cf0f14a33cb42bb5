"""Writes live here, one module per entity (`task_create`, `run_finish`, `group_pause`, …). Status moves go
through `tasks_app.transitions`; messages to the broker through `tasks_app.services.enqueue`."""
