"""The ``tessera`` command: simulator runs, and the parties of a real deployment."""

from tessera.cli import audit as _audit  # noqa: F401 - registers `tessera audit`
from tessera.cli import data as _data  # noqa: F401 - registers `tessera data`
from tessera.cli import deploy as _deploy  # noqa: F401 - registers the deployment commands
from tessera.cli import keys as _keys  # noqa: F401 - registers `tessera keys`
from tessera.cli import report as _report  # noqa: F401 - registers `tessera report`
from tessera.cli.main import app

__all__ = ["app"]
