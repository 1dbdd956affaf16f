"""``python -m oocstore``: the same CLI as the ``oocstore`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
