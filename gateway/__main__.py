"""``python -m gateway`` is ``amigw``."""

from gateway.cli import run

run()
