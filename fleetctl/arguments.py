"""From command-line arguments to unit names and local unit files, as fleetctl did it.

- A unit argument may be a path: the unit name is its basename, with ``.service`` appended
  when it has no recognised suffix (``units/web`` -> ``web.service``, read from
  ``units/web.service``).
- ``submit``/``load``/``start`` accept globs the shell did not expand (quoted, or no
  match in the current directory) that match local files; ``stop``/``unload``/``destroy``/
  ``status``/``cat``/``journal`` accept globs matched against the units in the cluster.
- An instance ``foo@bar.service`` without a file of its own takes its body from the
  template ``foo@.service``: the one in the cluster, else a local file next to the argument.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable

from fleetctl.errors import FleetctlError
from fleetd.model.errors import UnitNameError
from fleetd.model.names import (
    DEFAULT_SUFFIX,
    has_glob,
    has_unit_suffix,
    mangle_unit_name,
    parse_unit_name,
)


def _basename(arg: str) -> str:
    return arg.rstrip("/").rpartition("/")[2]


def unit_name(arg: str) -> str:
    """The unit name an argument stands for, validated; a bad one is a
    :class:`FleetctlError` naming the argument and the rule it breaks."""
    try:
        name = mangle_unit_name(arg)
        parse_unit_name(name)
    except UnitNameError as exc:
        detail = str(exc)
        if _basename(arg) != arg:
            detail = f"{detail} (from argument {arg})"
        raise FleetctlError(detail) from None
    return name


def local_file_candidates(arg: str) -> list[str]:
    """Where a local unit file for ``arg`` may be: ``arg.service`` when the argument has no
    unit suffix (fleet appended it before reading), then ``arg`` itself."""
    base = _basename(arg)
    candidates = []
    if base and not has_unit_suffix(base):
        candidates.append(f"{arg}.{DEFAULT_SUFFIX}")
    candidates.append(arg)
    return candidates


def local_unit_path(arg: str) -> str | None:
    """The local file ``arg`` names, if one exists."""
    for candidate in local_file_candidates(arg):
        if os.path.isfile(candidate):
            return candidate
    return None


def template_path(arg: str, template: str) -> str:
    """The local template file next to an instance argument: ``units/web@1`` ->
    ``units/web@.service``."""
    directory = os.path.dirname(arg.rstrip("/"))
    return os.path.join(directory, template) if directory else template


def expand_file_globs(args: Iterable[str]) -> list[str]:
    """Arguments of submit/load/start with unexpanded globs that match local files replaced
    by those files (sorted, as a shell would); other arguments are kept as they are."""
    result: list[str] = []
    for arg in args:
        if has_glob(arg) and not os.path.exists(arg):
            matches = sorted(path for path in glob.glob(arg) if os.path.isfile(path))
            if not matches and not has_unit_suffix(_basename(arg)):
                matches = sorted(path for path in glob.glob(f"{arg}.{DEFAULT_SUFFIX}") if os.path.isfile(path))
            if matches:
                result.extend(matches)
                continue
        result.append(arg)
    return result


def match_names(pattern: str, names: Iterable[str]) -> list[str]:
    """Unit names matching a glob (its basename; ``web@*`` also matches ``web@1.service``
    as ``web@*.service``), sorted."""
    base = _basename(pattern)
    patterns = [base]
    if not has_unit_suffix(base) and not base.endswith("*"):
        patterns.append(f"{base}.{DEFAULT_SUFFIX}")
    return sorted(name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns))


def dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


__all__ = [
    "dedupe",
    "expand_file_globs",
    "has_glob",
    "local_file_candidates",
    "local_unit_path",
    "match_names",
    "template_path",
    "unit_name",
]
