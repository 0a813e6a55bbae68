"""The adapter's files: unit files in fleet's own directory and their runtime links.

Blocking file-system code, kept apart from the manager's asyncio code that calls it in a
thread. Two views of every path exist because the systemd being driven may live in
another mount namespace (a test host): systemd is told paths as it sees them, while the
files are written under ``root`` + that path.
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
        """Write changed files; (names that need link+reload, names to disable first)."""
        directory = self.local_units_directory
        directory.mkdir(parents=True, exist_ok=True)
        changed: list[str] = []
        disable: list[str] = []
        for name, file in units.items():
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


__all__ = ["UnitFiles", "file_hash", "has_install", "runtime_dir"]
