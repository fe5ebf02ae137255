"""Command-line tools of the project (run as scripts: python tools/NAME.py)."""
