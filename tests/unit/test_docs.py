"""fleet.conf.sample stays true to fleetd: every option it lists is one fleetd's own
config loader accepts (with the default the sample shows), and every option fleetd knows
is listed."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from fleetd.config import IGNORED_OPTIONS, PARSERS, Config, parse_config_file

SAMPLE = Path(__file__).resolve().parents[2] / "fleet.conf.sample"
OPTION_LINE = re.compile(r"^#([a-z_]+) =(?: (.*))?$")


def sample_options() -> dict[str, str]:
    """``#option = value`` lines of the sample, uncommented: option -> value."""
    options: dict[str, str] = {}
    for line in SAMPLE.read_text().splitlines():
        match = OPTION_LINE.match(line)
        if match:
            assert match.group(1) not in options, f"{match.group(1)} listed twice"
            options[match.group(1)] = match.group(2) or ""
    return options


def test_every_option_fleetd_knows_is_in_the_sample() -> None:
    listed = set(sample_options())
    assert set(PARSERS) <= listed, f"missing from fleet.conf.sample: {sorted(set(PARSERS) - listed)}"
    assert set(IGNORED_OPTIONS) <= listed


def test_the_sample_lists_no_option_fleetd_does_not_know() -> None:
    unknown = set(sample_options()) - set(PARSERS) - set(IGNORED_OPTIONS)
    assert not unknown


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_each_option_parses_to_its_default(name: str) -> None:
    # One line at a time: a secret and its file in one file are (rightly) an error.
    value = sample_options()[name]
    config, warnings = parse_config_file(f"{name} = {value}\n", "fleet.conf.sample")
    assert warnings == []
    assert getattr(config, name) == getattr(Config(), name)


@pytest.mark.parametrize("name", sorted(IGNORED_OPTIONS))
def test_ignored_options_are_accepted_with_a_warning(name: str) -> None:
    config, warnings = parse_config_file(f"{name} = {sample_options()[name]}\n", "fleet.conf.sample")
    assert config == Config()
    assert len(warnings) == 1 and "has no effect" in warnings[0]


def test_the_whole_sample_uncommented_is_one_valid_fleet_conf() -> None:
    # Every option uncommented at once, except the inline secrets (their *_file partners
    # stand for them; both in one file is refused by design).
    text = SAMPLE.read_text()
    text = re.sub(r"^#([a-z_]+ =)", r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"^(api_token|etcd_password) =.*$", "", text, flags=re.MULTILINE)
    config, warnings = parse_config_file(text, "fleet.conf.sample")
    assert config == Config()
    assert all("has no effect" in w for w in warnings)
    assert len(warnings) == len(IGNORED_OPTIONS)


def test_every_config_field_is_an_option() -> None:
    assert {f.name for f in fields(Config)} == set(PARSERS)


DOCS = SAMPLE.parent / "docs"


def test_metrics_doc_names_every_metric() -> None:
    # Every family a daemon's registry can export (the engine leader's and the agent's
    # included), by the name a scrape shows (counters with their _total).
    from types import SimpleNamespace

    from fleetd.aio import TaskHealth
    from fleetd.metrics import Metrics

    metrics = Metrics(process=True)
    metrics.node = SimpleNamespace(error=lambda: None, tasks=lambda: [TaskHealth("engine")])
    metrics.store = SimpleNamespace(bad_record_counts=lambda: {"unit": 1})
    metrics.engine = SimpleNamespace(
        leading=SimpleNamespace(is_set=lambda: True),
        view=SimpleNamespace(units={}, machines={}, invalid={}),
        reasons={},
    )
    metrics.agent = SimpleNamespace(states=SimpleNamespace(published={}))
    metrics.dbus = SimpleNamespace(errors={"StartUnit": 1})
    metrics.etcd_request("get", 0.001, None)
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
        if family.name.startswith("fleet_")
    }
    assert "fleet_units_total" in names and "fleet_api_requests_total" in names, names
    text = (DOCS / "metrics.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/metrics.md does not describe {missing}"


def test_client_doc_names_every_global_option_and_variable() -> None:
    from fleetctl.commands import GLOBAL_FLAGS

    text = (DOCS / "client.md").read_text()
    missing = sorted(f.name for f in GLOBAL_FLAGS if f"`--{f.name}`" not in text or f"`{f.env}`" not in text)
    assert not missing, f"docs/client.md does not describe {missing}"


def test_configuration_doc_describes_every_option() -> None:
    # Each option fleetd accepts has a row of its own in docs/configuration.md.
    text = (DOCS / "configuration.md").read_text()
    missing = sorted(name for name in PARSERS if f"\n| `{name}` |" not in text)
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_docs_index_lists_every_document() -> None:
    text = (DOCS / "README.md").read_text()
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name})" not in text)
    assert not missing, f"docs/README.md does not list {missing}"


def test_relative_links_in_the_docs_lead_to_files() -> None:
    broken = []
    for doc in [SAMPLE.parent / "README.md", SAMPLE.parent / "examples" / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(SAMPLE.parent)}: {target}")
    assert not broken, f"links to missing files: {broken}"
