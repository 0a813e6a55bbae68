"""The adapter's files: unit files in fleet's own directory and their runtime links.

Blocking file-system code, kept apart from the manager's asyncio code that calls it in a
thread. Two views of every path exist because the systemd being driven may live in
another mount namespace (a test host): systemd is told paths as it sees them, while the
files are written under ``root`` + that path.

The unit contract (docs/units.md) is checked again here, where names become file names
and options become a file systemd reads: a record in etcd may have been written by an old
client that never checked it. A unit that breaks it is refused (:func:`refusal`): logged
once, left out of the batch, never raised into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from fleetd.model.errors import UnitFileError
from fleetd.model.names import validate_unit_name
from fleetd.model.unitfile import UnitFile, parse_unit_file

log = logging.getLogger(__name__)


def runtime_dir(user: bool) -> str:
    """The runtime directory of the system manager, or of this user's manager."""
    if user:
        return os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return "/run"


def has_install(text: str) -> bool:
    """Whether a unit file's text has an ``[Install]`` section (so it was enabled)."""
    try:
        return "Install" in parse_unit_file(text).sections()
    except UnitFileError:
        return "[Install]" in text


def refusal(name: str, file: UnitFile | None = None) -> str | None:
    """Why the adapter must not act on unit ``name`` (with ``file`` as its body), or
    ``None``: the name must pass the one name check (so it is a safe file name and can
    never be read as a ``systemctl`` option, nor be a host unit such as dbus.service), and
    the body must render to a file that systemd reads as the options ``fleetctl cat``
    shows."""
    try:
        validate_unit_name(name)
    except ValueError as exc:
        return str(exc)
    problem = file.problem() if file is not None else None
    return f"unit {name}: {problem}" if problem else None


def file_hash(text: str) -> str:
    """The fleet hash of a unit file's text (canonical form; raw SHA-1 if it does not parse)."""
    try:
        return parse_unit_file(text).hash()
    except UnitFileError:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()


class UnitFiles:
    """Unit files in ``units_directory`` and their links in ``runtime_unit_dir`` (both as
    systemd sees them), reached from here through ``root``."""

    def __init__(self, units_directory: str, runtime_unit_dir: str, root: Path) -> None:
        self.units_directory = units_directory
        self.runtime_unit_dir = runtime_unit_dir
        self.root = root
        # refusals already logged, so a unit refused on every reconcile pass logs once
        self._reported: set[tuple[str, str]] = set()

    def refuse(self, name: str, reason: str, action: str = "refusing") -> None:
        """Log that ``name`` is left out, once per (name, reason)."""
        if (name, reason) not in self._reported:
            if len(self._reported) > 10_000:
                self._reported.clear()  # bounded; at worst a refusal is logged again
            self._reported.add((name, reason))
            log.warning("%s unit %r: %s", action, name, reason)

    def acceptable(self, units: Mapping[str, UnitFile]) -> dict[str, UnitFile]:
        """The units that keep the contract (see :func:`refusal`); the rest are logged."""
        kept: dict[str, UnitFile] = {}
        for name, file in units.items():
            reason = refusal(name, file)
            if reason is None:
                kept[name] = file
            else:
                self.refuse(name, reason)
        return kept

    def acceptable_names(self, names: Sequence[str]) -> list[str]:
        """The names that pass the name check; the rest are logged and left out."""
        kept: list[str] = []
        for name in names:
            reason = refusal(name)
            if reason is None:
                kept.append(name)
            else:
                self.refuse(name, reason)
        return kept

    def local(self, path: str) -> Path:
        """A path as systemd sees it -> the same file from here."""
        return self.root / path.lstrip("/")

    def unit_path(self, name: str) -> str:
        """Where the file of unit ``name`` is, as systemd sees it."""
        return f"{self.units_directory}/{name}"

    @property
    def local_units_directory(self) -> Path:
        return self.local(self.units_directory)

    def discover(self) -> dict[str, str]:
        """The unit files present (name -> hash); anything else in the directory is ignored."""
        found: dict[str, str] = {}
        directory = self.local_units_directory
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                validate_unit_name(entry.name)
                text = Path(entry.path).read_text(encoding="utf-8")
            except (ValueError, OSError) as exc:
                log.warning("ignoring %s in %s: %s", entry.name, directory, exc)
                continue
            found[entry.name] = file_hash(text)
        return found

    def link_ok(self, name: str) -> bool:
        try:
            return os.readlink(self.local(f"{self.runtime_unit_dir}/{name}")) == self.unit_path(name)
        except OSError:
            return False

    def scan_links(self, managed: Collection[str]) -> tuple[dict[str, UnitFile], list[Path]]:
        """(managed units whose runtime link is missing, links to our files that are gone)."""
        unlinked: dict[str, UnitFile] = {}
        for name in managed:
            if not self.link_ok(name):
                try:
                    unlinked[name] = parse_unit_file((self.local_units_directory / name).read_text(encoding="utf-8"))
                except (OSError, UnitFileError) as exc:
                    log.warning("cannot re-link %s: %s", name, exc)
        dangling: list[Path] = []
        links_root = self.local(self.runtime_unit_dir)
        prefix = self.units_directory + "/"
        try:
            dirs = [links_root] + [Path(d.path) for d in os.scandir(links_root) if d.is_dir(follow_symlinks=False)]
        except OSError:
            dirs = []
        for directory in dirs:
            with contextlib.suppress(OSError):
                for entry in os.scandir(directory):
                    if not entry.is_symlink():
                        continue
                    target = os.readlink(entry.path)
                    if target.startswith(prefix) and target[len(prefix) :] not in managed:
                        dangling.append(Path(entry.path))
        return unlinked, dangling

    def write(self, units: Mapping[str, UnitFile]) -> tuple[list[str], list[str]]:
        """Write changed files; (names that need link+reload, names to disable first).
        A unit that breaks the contract is not written (see :meth:`acceptable`)."""
        directory = self.local_units_directory
        directory.mkdir(parents=True, exist_ok=True)
        changed: list[str] = []
        disable: list[str] = []
        for name, file in self.acceptable(units).items():
            text = file.serialize()
            target = directory / name
            try:
                old: str | None = target.read_text(encoding="utf-8")
            except FileNotFoundError:
                old = None
            if old == text and self.link_ok(name):
                continue
            if old != text:
                tmp = directory / f".{name}.tmp"
                tmp.write_text(text, encoding="utf-8")
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
                if old is not None and has_install(old) and "Install" not in file.sections():
                    disable.append(name)
            changed.append(name)
        return changed, disable

    def existing(self, names: Sequence[str]) -> list[str]:
        """The names whose unit file is present."""
        return [n for n in names if (self.local_units_directory / n).exists()]

    def remove(self, names: Sequence[str]) -> None:
        """Remove the unit files and any link to them that is left."""
        links_root = self.local(self.runtime_unit_dir)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.local_units_directory / name).unlink()
            # DisableUnitFiles removed the links; clean up after a failed or partial one
            candidates = [links_root / name]
            with contextlib.suppress(OSError):
                candidates += [
                    Path(d.path) / name
                    for d in os.scandir(links_root)
                    if d.is_dir(follow_symlinks=False) and d.name.endswith((".wants", ".requires", ".upholds"))
                ]
            for link in candidates:
                with contextlib.suppress(OSError):
                    if os.readlink(link) == self.unit_path(name):
                        link.unlink()


__all__ = ["UnitFiles", "file_hash", "has_install", "refusal", "runtime_dir"]
