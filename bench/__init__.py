"""Throughput benchmark: the full scheduler pipeline against a bare Celery task running the same CLI.

Run it with ``python -m bench`` (see bench/README.md). Nothing here is imported by the product.
"""

from __future__ import annotations
