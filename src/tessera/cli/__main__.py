"""``python -m tessera.cli``: how a deployment starts its party processes.

A party started by ``tessera up`` stops itself if ``up`` dies without stopping it
(``deploy.supervise.watch_parent``).
"""

from tessera.deploy.supervise import watch_parent

watch_parent()

from tessera.cli import app  # noqa: E402 - the watch starts before the (slow) imports

app()
