"""``python -m asyncflow``: the same as the ``asyncflow`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
