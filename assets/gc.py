"""``python -m assets.gc``: pipeline/gc.py's command, keeping what the instance's recent materializations refer to
(assets/gc_instance.py reads them)."""
from __future__ import annotations

from pipeline import gc

from .gc_instance import recent_references


def main(argv: list[str] | None = None) -> int:
    return gc.main(argv, recent_references)


if __name__ == "__main__":
    raise SystemExit(main())
