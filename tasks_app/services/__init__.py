"""Writes live here, one module per entity (`task_create`, `task_transition`, `run_finish`, `group_pause`…)."""
