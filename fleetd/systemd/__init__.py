"""The systemd adapter: the only code that talks D-Bus (``dbus_fast``) or reads journals.

- :class:`SystemdManager` (``manager.py``): the agent's ``UnitManager`` on a real machine,
  composed of the state cache (``states.py``), batched D-Bus calls and queries
  (``batching.py``) and the unit files on disk (``files.py``).
- :class:`SystemdBus` (``bus.py``): a reconnecting, bounded D-Bus session with systemd.
- :func:`read_journal`, :func:`unit_status_text` (``journal.py``): ``journalctl`` and
  ``systemctl status`` output for ``fleetctl journal`` / ``status``.
"""

from fleetd.systemd.bus import (
    SystemdBus,
    SystemdCallError,
    SystemdError,
    SystemdUnavailable,
    default_bus_address,
    unit_object_path,
)
from fleetd.systemd.journal import JournalError, read_journal, unit_status_text
from fleetd.systemd.manager import DEFAULT_UNITS_DIRECTORY, UNKNOWN, SystemdManager, file_hash

__all__ = [
    "DEFAULT_UNITS_DIRECTORY",
    "UNKNOWN",
    "JournalError",
    "SystemdBus",
    "SystemdCallError",
    "SystemdError",
    "SystemdManager",
    "SystemdUnavailable",
    "default_bus_address",
    "file_hash",
    "read_journal",
    "unit_object_path",
    "unit_status_text",
]
