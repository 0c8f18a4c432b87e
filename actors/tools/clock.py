"""What `get_time` answers: the time in the zone the user asked for, else the local one.

Small models pass a time zone when nobody asked for one: they copy the example of the
tool's description (Europe/Paris) or make one up. So a zone the model passes is
used only when the user's words could be asking for it: they name it (its city, region or
country, or its abbreviation), or they name something that is not part of asking the time
("… in Beijing"). "What time is it?" names nothing, and gets the local time whatever the
model passed. The answer always says which zone it is in, and only that, in the session's
language (the model reads it out).

The local zone is the server's: neither a session nor a user carries a time zone today.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import logging
import re
from collections.abc import Iterable
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from actors.tools.spec import ToolError
from domain.phrases import phrases

log = logging.getLogger("vagent.tools")

# Words of asking the time (and of asking a tool for it) that name no place.
_ASKING = frozenset("""
a about again already also am an and any are assistant at be by can check clock could current
currently date day do does exact exactly find for function get give good have hello here hey hi
hour hours how i in is it it's its just know late let local look me minute minutes month my need
now o'clock of oh ok okay on our out please pm quick right say see show so still tell than thank
thanks that the then there this time to today today's tool use us vagent want was wat we week
well what what's whats which will would year yes you
""".split()) | frozenset("现在几点时间了吗请问今天是日期星期多少号钟告诉我你知道呢啊的点儿在")
_NOT_A_ZONE = frozenset({"", "local", "server", "here", "default", "none", "null", "auto"})
_ALIASES = ("timezone", "time_zone", "tz", "zone", "location", "city", "place")


def answer(arguments: dict[str, object], said: list[str] | None, language: str = "en") -> str:
    """The time, as `get_time` answers, in `language` (`en`, `zh`). `said` is the session's
    user inputs up to this call's turn (oldest first), or None when unknown (then a zone
    passed is used as is)."""
    requested = next((arguments[k] for k in _ALIASES if arguments.get(k) is not None), None)
    if requested is not None and not isinstance(requested, str):
        raise ToolError("timezone must be the IANA name of the place the user named, as text")
    wanted = (requested or "").strip()
    if wanted.lower() in _NOT_A_ZONE:
        return _describe(datetime.now().astimezone(), None, language)
    zone = find_zone(wanted)
    if said is not None and said:
        asked_for = zone is not None and any(names_zone(text, zone) for text in said)
        if not asked_for and names_nothing(said[-1]):
            # The result says only which zone it is in: told why, a small model reads the
            # reason out ("the time in your call is …"). The log says why.
            log.info("get_time: local time instead of %r, as the user named no place", wanted)
            return _describe(datetime.now().astimezone(), None, language)
    if zone is None:
        raise ToolError(f"unknown time zone {wanted!r}: give the IANA name (Area/City) of the "
                        "place the user named, or leave it out for the local time")
    return _describe(datetime.now(zone), zone, language)


def _describe(now: datetime, zone: ZoneInfo | None, language: str) -> str:
    words = phrases(language)
    offset = now.strftime("%z")
    date = words.date.format(weekday=words.weekdays[now.weekday()], day=now.day,
                             month=words.months[now.month - 1], month_number=now.month,
                             year=now.year, clock=f"{now:%H:%M:%S}")
    where = zone.key if zone else words.local_zone.format(name=now.tzname())
    return words.time.format(date=date, zone=where, offset=f"{offset[:3]}:{offset[3:]}",
                             iso=now.isoformat(timespec="seconds"))


def find_zone(name: str) -> ZoneInfo | None:
    """The zone `name` stands for: an IANA name in any case, or a city that names one
    ("Tokyo", "new york")."""
    key = _zone_keys().get(re.sub(r"[\s-]+", "_", name.strip()).lower())
    if key is None:
        return None
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(key)
    return None


def names_zone(text: str, zone: ZoneInfo) -> bool:
    """Whether `text` names `zone`: its city, region or country, or its abbreviation."""
    lowered = text.lower()
    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", lowered) for word in _zone_words(zone))


def names_nothing(text: str) -> bool:
    """Whether `text` holds only words of asking the time (so no place)."""
    return all(word in _ASKING for word in _words(text))


def _words(text: str) -> Iterable[str]:
    for word in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower()):
        if any(ord(char) >= 0x2E80 for char in word):
            yield from word  # CJK: a character is a word
        else:
            yield word


def _zone_words(zone: tzinfo) -> set[str]:
    key = getattr(zone, "key", "")
    words = {part.replace("_", " ").lower() for part in key.split("/") if part not in ("Etc", "")}
    words |= _countries().get(key, set())
    name = datetime.now(zone).tzname() or ""
    if name.isalpha():
        words.add(name.lower())  # CET, JST, PST
    return {word for word in words if len(word) >= 2}


@functools.cache
def _zone_keys() -> dict[str, str]:
    """Every zone by its lower-cased name, and by its city where that is unambiguous."""
    keys = sorted(available_timezones())
    by_name = {key.lower(): key for key in keys}
    cities: dict[str, set[str]] = {}
    for key in keys:
        if "/" in key:
            cities.setdefault(key.rsplit("/", 1)[1].lower(), set()).add(key)
    for city, found in cities.items():
        if len(found) == 1:
            by_name.setdefault(city, found.pop())
    return by_name


@functools.cache
def _countries() -> dict[str, set[str]]:
    """Zone → the lower-cased names of the countries it serves, from tzdata's tables."""
    for folder in _tables():
        try:
            names: dict[str, list[str]] = {}
            for line in (folder / "iso3166.tab").read_text(encoding="utf-8").splitlines():
                if line and not line.startswith("#"):
                    code, _, name = line.partition("\t")
                    # "Britain (UK)", "Korea (South)": the name and what is in brackets
                    names[code] = [n.strip().lower() for n in re.split(r"[()]", name) if n.strip()]
            zones: dict[str, set[str]] = {}
            for table in ("zone.tab", "zone1970.tab"):
                with contextlib.suppress(OSError):
                    for line in (folder / table).read_text(encoding="utf-8").splitlines():
                        fields = line.split("\t")
                        if len(fields) >= 3 and not line.startswith("#"):
                            for code in fields[0].split(","):
                                zones.setdefault(fields[2], set()).update(names.get(code, []))
            return zones
        except OSError:
            continue
    return {}


def _tables() -> list[Path]:
    folders = [Path("/usr/share/zoneinfo")]
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        folders.insert(0, Path(str(importlib.resources.files("tzdata") / "zoneinfo")))
    return folders
