"""Firmware images an operator offers to xiaozhi devices, one directory per board type:

    <data dir>/firmware/<board type>/<version>.bin      e.g. firmware/bread-compact-wifi/1.9.2.bin

A device whose OTA report names that board type (`board.type`) and runs an older version
is offered the newest image there. Versions are dot-separated numbers, compared number by
number as the firmware compares them (it parses each part with `stoi`, so an image named
otherwise is never offered). Images are served at `/xiaozhi/ota/download/<board>/<file>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ApiError

DIRECTORY = "firmware"
BOARD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE = re.compile(r"^(\d{1,9}(?:\.\d{1,9}){0,7})\.bin$")
DOWNLOAD_PATH = "/xiaozhi/ota/download/"


@dataclass(frozen=True, slots=True)
class Image:
    board: str
    version: str

    @property
    def path(self) -> str:
        return f"{DOWNLOAD_PATH}{self.board}/{self.version}.bin"


def version_key(version: str) -> tuple[int, ...]:
    """A version as the firmware compares it: each dot-separated part's leading number
    (0 where there is none)."""
    parts = []
    for part in version.split("."):
        digits = re.match(r"\s*[+-]?\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def newer(current: str, offered: str) -> bool:
    """The firmware's rule: the first differing part decides, else the longer is newer."""
    a, b = version_key(current), version_key(offered)
    for x, y in zip(a, b, strict=False):
        if x != y:
            return y > x
    return len(b) > len(a)


def newest(data_dir: Path, board: str | None, current: str) -> Image | None:
    """The newest image for `board`, if it is newer than `current`."""
    if not board or not BOARD.match(board) or ".." in board:
        return None
    folder = data_dir / DIRECTORY / board
    if not folder.is_dir():
        return None
    versions = [m.group(1) for f in folder.iterdir() if f.is_file() and (m := IMAGE.match(f.name))]
    if not versions:
        return None
    best = max(versions, key=version_key)
    return Image(board, best) if newer(current, best) else None


def locate(data_dir: Path, path: str) -> Path:
    """The image file `path` (`<board>/<version>.bin`) names; ApiError 400 for any other
    shape (a `..`, another directory), 404 when there is no such image."""
    board, _, name = path.partition("/")
    if not BOARD.match(board) or ".." in board or not IMAGE.match(name):
        raise ApiError(400, "invalid_firmware_path",
                       "a firmware path is <board type>/<version>.bin", {"path": path[:200]})
    root = (data_dir / DIRECTORY).resolve()
    file = (root / board / name).resolve()
    if not file.is_relative_to(root) or not file.is_file():
        raise ApiError(404, "not_found", f"no firmware image {path!r}")
    return file
