"""``python -m tessera.cli``: how a deployment starts its party processes."""

from tessera.cli import app

app()
