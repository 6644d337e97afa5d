"""Operational scripts: run them as `python -m scripts.<name>` from the repository root,
or through the shell entries next to them (`scripts/prestart`, `scripts/rename`)."""
