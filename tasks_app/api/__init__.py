"""The client HTTP API (DRF) under /api/v1/."""
