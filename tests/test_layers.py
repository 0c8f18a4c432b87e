"""The layers, checked from the source: schemas → bus → settings → domain → projections →
actors and edge side by side → cli, with audio (pure media code) below actors and edge.

Every product file is parsed, so an import inside a function counts as much as one at the
top, and so does a module named in a string: `importlib.import_module(...)`, `__import__`
and "module:attr" registry entries. Each rule is its own case, so a failure names the rule
and the lines that break it."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from actors.registry import ACTORS
from bus.health import ACTOR_NAMES

ROOT = Path(__file__).resolve().parents[1]
# A registry entry such as "actors.asr.actor:Asr".
REGISTRY_ENTRY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*):[A-Za-z_]\w*$")
# Text that is (or starts) a NATS subject: wildcards, the evt/live/audio parts, or a prefix
# meant to be completed. Logger names ("vagent.edge.ws") and file names are none of these.
SUBJECT_SHAPE = re.compile(r"^vagent\.(?:\S*[*>]|\S*\.(?:evt|live|audio|query|ctl)(?:\.|$)|\S*\.$)")


@cache
def product_packages() -> tuple[str, ...]:
    """The packages the wheel ships: a new one is checked without editing this test."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return tuple(project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])


@dataclass(frozen=True, slots=True)
class Use:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


@dataclass(frozen=True, slots=True)
class Source:
    package: str
    path: str
    imports: tuple[Use, ...]  # `what` is a module's dotted name
    bus_internals: tuple[Use, ...]  # `.js` / `.nc` attributes and hand-made subjects


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    if node.module is None:  # `from . import x`: x may be a module
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def _string_prefix(node: ast.expr) -> str | None:
    """The text of a string constant, or the constant start of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _called_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _parse(path: Path, package: str) -> Source:
    return _scan(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix(), package,
                 _module_name(path), path.name == "__init__.py")


def _scan(text: str, rel: str, package: str, module: str, is_package: bool) -> Source:
    tree = ast.parse(text, filename=rel)
    imports: list[Use] = []
    internals: list[Use] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [Use(rel, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imports += [Use(rel, node.lineno, name) for name in _absolute(node, module, is_package)]
        elif isinstance(node, ast.Call) and node.args:
            if _called_name(node) in {"import_module", "__import__"}:
                named = _string_prefix(node.args[0])
                if named:
                    imports.append(Use(rel, node.lineno, named.rstrip(".")))
        elif isinstance(node, ast.Attribute) and node.attr in {"js", "nc"}:
            internals.append(Use(rel, node.lineno, f".{node.attr}"))
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            entry = REGISTRY_ENTRY.match(node.value)
            if entry and entry.group(1).split(".")[0] in product_packages():
                imports.append(Use(rel, node.lineno, entry.group(1)))
        if isinstance(node, ast.JoinedStr | ast.Constant):
            text = _string_prefix(node)
            if text is not None and text.startswith("vagent.") and (
                    isinstance(node, ast.JoinedStr) or SUBJECT_SHAPE.match(text)):
                internals.append(Use(rel, node.lineno, f"subject {text!r}"))
    # An f-string's parts are constants too: each subject is reported once.
    return Source(package, rel, tuple(sorted(imports, key=lambda u: u.line)),
                  tuple(sorted(dict.fromkeys(internals), key=lambda u: u.line)))


@cache
def sources() -> tuple[Source, ...]:
    return tuple(_parse(path, package) for package in product_packages()
                 for path in sorted((ROOT / package).rglob("*.py")))


def _in(sources_: tuple[Source, ...], packages: tuple[str, ...]) -> Iterator[Source]:
    return (s for s in sources_ if s.package in packages)


@dataclass(frozen=True, slots=True)
class Rule:
    """Nothing in `packages` imports any of `forbidden` (modules, by their top-level name)."""

    packages: tuple[str, ...]
    forbidden: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{'+'.join(self.packages)}-not-{'+'.join(self.forbidden)}"

    def broken_by(self) -> list[Use]:
        return [use for source in _in(sources(), self.packages) for use in source.imports
                if use.what.split(".")[0] in self.forbidden]


# What runs the layers from above: commands, the replay and evaluation engines, benches,
# development servers.
TOP = ("cli", "replay", "evals", "benches", "devservers")


def _rules() -> list[Rule]:
    rules = [Rule(("edge",), ("actors",)), Rule(("edge",), TOP),
             Rule(("actors",), ("edge",)), Rule(("actors",), TOP)]
    rules += [Rule((low,), high) for low in ("schemas", "bus", "settings", "domain", "projections")
              for high in (("actors",), ("edge",), TOP)]
    below = ("schemas", "bus", "settings", "domain", "projections")
    rules += [Rule((low,), (high,)) for i, low in enumerate(below[:-1]) for high in below[i + 1:]]
    # Media code under both actors and edge: only the wire schemas below it.
    rules.append(Rule(("audio",), tuple(p for p in product_packages() if p not in {"audio", "schemas"})))
    # Metrics and traces are called from every layer, the bus included: they know only events.
    rules.append(Rule(("telemetry",),
                      tuple(p for p in product_packages() if p not in {"telemetry", "schemas"})))
    return rules


# Rules that still fail while the work that fixes them is under way: strict, so that each
# one turns into a failure the moment it passes and its mark must go.
PENDING: dict[str, str] = {}
PENDING_BUS: dict[str, str] = {}


def _pending(rule_id: str, reasons: dict[str, str]) -> list[pytest.MarkDecorator]:
    reason = reasons.get(rule_id)
    return [] if reason is None else [pytest.mark.xfail(strict=True, reason=f"pending: {reason}")]


@pytest.mark.parametrize("rule", [pytest.param(rule, id=rule.id, marks=_pending(rule.id, PENDING))
                                  for rule in _rules()])
def test_layer(rule: Rule) -> None:
    broken = rule.broken_by()
    assert not broken, f"{rule.id}:\n" + "\n".join(map(str, broken))


def test_only_bus_imports_nats() -> None:
    broken = [use for source in sources() if source.package != "bus" for use in source.imports
              if use.what.split(".")[0] == "nats"]
    assert not broken, "\n".join(map(str, broken))


@pytest.mark.parametrize("package", [pytest.param(p, id=p, marks=_pending(p, PENDING_BUS))
                                     for p in product_packages() if p != "bus"])
def test_bus_internals_stay_in_bus(package: str) -> None:
    """Outside bus/, nothing reaches a Bus's `.js` / `.nc` or spells a `vagent.` subject:
    bus/ and its subjects module are the one place that knows NATS."""
    broken = [use for source in _in(sources(), (package,)) for use in source.bus_internals]
    assert not broken, "\n".join(map(str, broken))


def test_the_checks_see_what_they_look_for() -> None:
    """The parser finds an import in a function, a module named in a string and a registry
    entry: a rule that sees nothing passes for the wrong reason."""
    probe = _scan("def f():\n    import edge.app\n    importlib.import_module(f'cli.{x}')\n"
                  "    from . import store\n"
                  "X = {'a': 'actors.asr.actor:Asr'}\nbus.js.purge()\ns = f'vagent.session.{sid}.evt.>'\n"
                  "log = logging.getLogger('vagent.edge.ws')\n",
                  "projections/probe.py", "projections", "projections.probe", is_package=False)
    assert {use.what for use in probe.imports} == {"edge.app", "cli", "projections.store",
                                                   "actors.asr.actor"}
    assert sorted(use.what for use in probe.bus_internals) == [".js", "subject 'vagent.session.'"]
    assert {source.package for source in sources()} == set(product_packages())


def test_readiness_expects_every_registered_actor() -> None:
    """The edge's /readyz waits for the actors by names kept in bus/ (the edge must not import
    the actor registry); they are the registry's names."""
    assert set(ACTOR_NAMES) == set(ACTORS)
