"""`python -m tasks_app.cli …`: the same as the `schedulerctl` console script."""

from __future__ import annotations

from tasks_app.cli import main

if __name__ == "__main__":
    main()
