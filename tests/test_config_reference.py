"""docs/configuration.md is rendered from the settings' declarations (settings/reference.py):
the committed file must be what they render today, and every setting must say what it means."""

from __future__ import annotations

import re
from pathlib import Path

from settings.config import ENV_OVERRIDES, ENV_VERBATIM, Config, parse
from settings.reference import PROCESS_ENV, Section, Setting, render, walk

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
PRODUCT = ["actors", "audio", "benches", "bus", "cli", "devservers", "domain", "edge", "hosting",
           "projections", "replay", "schemas", "settings"]


def test_the_committed_reference_is_what_the_settings_render() -> None:
    assert DOC.read_text() == render(), "run `just docs` and commit docs/configuration.md"


def test_every_setting_and_section_says_what_it_means() -> None:
    items = list(walk())
    undocumented = [i.path if isinstance(i, Section) else f"{i.section}.{i.key}"
                    for i in items if not i.meaning]
    assert undocumented == []
    # The walk reaches the nested tables and the lists of tables too.
    sections = {i.path for i in items if isinstance(i, Section)}
    assert {"asr.vad", "auth.argon2", "edge.xiaozhi", "llm.providers[]", "tools.mcp[]"} <= sections


def test_each_environment_override_names_a_setting_the_reference_shows() -> None:
    paths = {s.path for s in walk() if isinstance(s, Setting)}
    assert set(ENV_OVERRIDES.values()) | set(ENV_VERBATIM.values()) <= paths
    text = render()
    for name in [*ENV_OVERRIDES, *ENV_VERBATIM]:
        assert f"`{name}`" in text, name


def test_each_default_shown_reads_back_as_the_default() -> None:
    """What the reference prints as a default, written into vagent.toml, changes nothing."""
    lines: dict[str, list[str]] = {}
    for s in walk():
        if isinstance(s, Setting) and "[]" not in s.section and s.default not in (None, "unset"):
            lines.setdefault(s.section, []).append(f"{s.key} = {s.default}")
    toml = "\n".join(f"[{section}]\n" + "\n".join(keys) for section, keys in lines.items())
    assert len(lines) >= 10
    assert parse(toml) == Config()


def test_every_variable_the_code_reads_is_in_the_reference() -> None:
    documented = {*ENV_OVERRIDES, *ENV_VERBATIM, *(v.name for v in PROCESS_ENV)}
    read = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            read |= set(re.findall(r"[\"'](VAGENT_[A-Z0-9_]+)[\"']", path.read_text()))
    assert read, "the scan found no variables at all"
    assert sorted(read - documented) == [], "add them to PROCESS_ENV in settings/reference.py"


def test_every_toml_example_in_the_docs_is_valid_settings() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = [(page.name, block) for page in pages
              for block in re.findall(r"```toml\n(.*?)```", page.read_text(), flags=re.S)]
    assert len(blocks) >= 3
    for name, block in blocks:
        assert parse(block, name) != Config(), name  # each example sets something
