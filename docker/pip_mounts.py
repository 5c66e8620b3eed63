"""Build an image with this machine's pip configuration, mounted for the build, never copied in.

Writes pip's effective configuration (every config file and PIP_* variable, merged as pip merges
them) to CONF_OUT and prints the `buildah bud` / `podman build` options that mount it at
/etc/pip.conf, plus every local path it names (certificates, constraints, find-links directories,
file:// indexes with the directory above them, where their files usually lie), read-only at the
same place:

    buildah bud $(python3 docker/pip_mounts.py /tmp/loragate-pip.conf) -t loragate .

The Dockerfiles run no command in their last stage, so neither the mounts nor the empty files a
build-time mount leaves behind end up in the image.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

# Keys whose values may name local files or directories.
PATH_KEYS = frozenset({"cert", "client-cert", "constraint", "requirement", "find-links"})
URL_KEYS = frozenset({"index-url", "extra-index-url", "find-links"})
ENV_SECTION = ":env:"


def pip_config(python: str = sys.executable) -> dict[str, dict[str, str]]:
    """pip's merged configuration as {section: {key: value}}; PIP_* variables override files."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, key = name.split(".", 1)
        value = str(ast.literal_eval(raw))
        (env if section == ENV_SECTION else sections.setdefault(section, {}))[key] = value
    sections.setdefault("global", {}).update(env)
    return sections


def local_paths(config: dict[str, dict[str, str]]) -> list[Path]:
    """Existing local files and directories the configuration refers to."""
    found: list[Path] = []
    for values in config.values():
        for key, value in values.items():
            if key not in PATH_KEYS | URL_KEYS:
                continue
            for item in value.split():
                parsed = urlparse(item)
                if parsed.scheme == "file":
                    candidate = Path(unquote(parsed.path))
                    if key != "find-links":
                        # A local index links its files relative to itself (../../files/...).
                        candidate = candidate.parent
                elif not parsed.scheme and key in PATH_KEYS:
                    candidate = Path(item)
                else:
                    continue
                if candidate.is_absolute() and candidate.exists() and candidate not in found:
                    found.append(candidate)
    return found


def render(config: dict[str, dict[str, str]]) -> str:
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def mount_options(conf_out: Path, python: str = sys.executable) -> list[str]:
    """Write the merged configuration to ``conf_out``; the build options that mount it all."""
    config = pip_config(python)
    conf_out.parent.mkdir(parents=True, exist_ok=True)
    conf_out.write_text(render(config), encoding="utf-8")
    conf_out.chmod(0o600)  # an index URL may carry a password
    options = ["-v", f"{conf_out}:/etc/pip.conf:ro"]
    for path in local_paths(config):
        options += ["-v", f"{path}:{path}:ro"]
    return options


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 docker/pip_mounts.py CONF_OUT", file=sys.stderr)
        return 2
    print(" ".join(mount_options(Path(argv[0]).resolve())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
