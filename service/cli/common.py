"""What every CLI command shares: the invocation's settings, failing, calling a gateway, and
printing a table."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated

import httpx
import typer

from service.settings import Settings


def settings_of(ctx: typer.Context) -> Settings:
    """The invocation's settings, read from the environment once and kept on the root context."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="LORAGATE_URL", help="Gateway base URL (default: from host and port)."
    ),
]
KeyOption = Annotated[
    str, typer.Option("--key", envvar="LORAGATE_API_KEY", help="An sre or admin API key.")
]


def iso_time(value: str | None, option: str) -> datetime | None:
    """An ``--since``/``--until`` style option: ISO 8601 with a UTC offset, or None."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise fail(f"{option} must be an ISO 8601 time, got {value!r}") from exc
    if parsed.tzinfo is None:
        raise fail(f"{option} needs a UTC offset (e.g. {value}+00:00 or {value}Z)")
    return parsed


def gateway_url(settings: Settings, url: str | None) -> str:
    """``--url`` / LORAGATE_URL, else the server's own host and port (LORAGATE_HOST, _PORT)."""
    if url:
        return url
    return f"http://{settings.host}:{settings.port}"


def typed_path(settings: Settings, path: Path) -> Path:
    """A path as typed: relative to the current directory, else, when nothing is there, to the
    adapter import root (where `adapters demo` and `adapters train` write)."""
    if path.is_absolute() or path.exists():
        return path.absolute()
    under_root = settings.effective_import_root / path
    return under_root if under_root.exists() else path.absolute()


# A GET changes nothing, so one whose connection dropped is sent again (after 1 s, then 2 s):
# a watch or a script then outlives a blip such as a gateway restart. Other methods are not.
READ_ATTEMPTS = 3


def call_gateway(base: str, key: str, method: str, path: str, body: object) -> object:
    """One admin API call to the gateway at ``base``; an HTTP error becomes a CLI error."""
    attempts = READ_ATTEMPTS if method == "GET" else 1
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.request(
                method,
                base.rstrip("/") + path,
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=600,
            )
            break
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:  # not a 600 s timeout
            if attempt == attempts:
                raise fail(f"cannot reach the gateway at {base}: {exc}") from exc
            typer.echo(f"cannot reach the gateway at {base} ({exc}); trying again", err=True)
            time.sleep(attempt)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach the gateway at {base}: {exc}") from exc
    payload = response.json() if response.content else None
    if response.status_code >= 400:
        message = payload["error"]["message"] if isinstance(payload, dict) else response.text
        raise fail(f"HTTP {response.status_code}: {message}")
    return payload


GAP = "  "


def columns(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Rows as lines of columns as wide as their widest cell, always ``GAP`` apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []

    def line(row: Sequence[str]) -> str:
        cells = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        return (GAP + GAP.join(cells)).rstrip()

    return [line(row) for row in rows]
