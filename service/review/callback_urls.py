"""Where a review callback URL really goes, or why it is refused. Pure: no I/O.

A callback may go only under an allow-listed prefix: the same scheme, host and port, and a path
under the prefix's path, segment by segment. A string prefix is fooled by paths that servers
read differently from how they are written, so any path that could be read two ways is refused
rather than guessed at: dot segments (``/hooks/../admin``), path parameters (``/hooks/..;/admin``,
which Tomcat-style servers read as ``..``), backslashes, an encoded dot, slash, backslash or
semicolon (``/hooks/%2e%2e/admin``, ``/hooks/%2fadmin``), and double encoding
(``/hooks/%252e%252e/admin``, which a server or proxy that decodes twice reads as ``..``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# Encoded '.', '/', '\' and ';' let a path read differently once a server decodes it.
_ENCODED_PATH_CHARS = re.compile(r"%(2e|2f|5c|3b)", re.IGNORECASE)
_ESCAPE = re.compile(r"%[0-9a-f]{2}", re.IGNORECASE)


class CallbackRefused(ValueError):
    """A callback URL that is malformed, ambiguous or outside the allow-list; says why."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a URL goes: scheme, host, port and the path's segments as a server decodes them."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def within(self, prefix: Place) -> bool:
        origin = (self.scheme, self.host, self.port)
        if origin != (prefix.scheme, prefix.host, prefix.port):
            return False
        wanted = prefix.segments[:-1] if prefix.segments[-1:] == ("",) else prefix.segments
        return self.segments[: len(wanted)] == wanted


def place(url: str) -> Place:
    """The URL's place; ``CallbackRefused`` for another scheme, userinfo
    (``http://allowed@elsewhere/``), a bad port or an ambiguous path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise CallbackRefused("only http and https URLs with a host are allowed")
    if "@" in parts.netloc:
        raise CallbackRefused("a user name or password in the URL is not allowed")
    segments = _segments(parts.path or "/")
    return Place(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], segments)


def _segments(path: str) -> tuple[str, ...]:
    if "\\" in path:
        raise CallbackRefused("a backslash in the path is not allowed")
    if ";" in path:
        raise CallbackRefused("path parameters (';') are not allowed")
    if _ENCODED_PATH_CHARS.search(path):
        raise CallbackRefused("an encoded '.', '/', '\\' or ';' in the path is not allowed")
    decoded = unquote(path)
    if _ESCAPE.search(decoded):
        raise CallbackRefused("a double-encoded path ('%25' before an escape) is not allowed")
    segments = tuple(decoded.split("/")[1:])
    if {".", ".."} & set(segments):
        raise CallbackRefused("'.' and '..' path segments are not allowed")
    return segments


def refusal(url: str, allowlist: Sequence[Place]) -> str | None:
    """Why a callback may not go to ``url``, or None when it lies under an allowed prefix
    (`/hooks/` allows `/hooks/review`, `/hooks/review` allows `/hooks/review/7` but not
    `/hooks/reviewer`)."""
    try:
        where = place(url)
    except CallbackRefused as exc:
        return str(exc)
    if any(where.within(prefix) for prefix in allowlist):
        return None
    return "not in the allow-list (under no prefix of LORAGATE_REVIEW_CALLBACK_ALLOWLIST)"


def allowlist_places(prefixes: Sequence[str]) -> tuple[Place, ...]:
    """The allow-list's prefixes; ``CallbackRefused`` naming the first one that is refused."""
    places = []
    for prefix in prefixes:
        try:
            places.append(place(prefix))
        except CallbackRefused as exc:
            raise CallbackRefused(f"review callback allow-list entry {prefix!r}: {exc}") from exc
    return tuple(places)
