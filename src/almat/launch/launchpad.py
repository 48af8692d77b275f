"""The one reader of FireWorks LaunchPad files, for ``almat submit`` and ``almat serve``.

``load_launchpad_spec`` reads the file (one ``ConfigError`` line for a missing file, bad YAML with its
line and column, a top level that is not a mapping, or no database ``name``); ``launchpad_host`` names
the server for messages, never the credentials; ``launchpad_from_spec`` makes the ``LaunchPad`` with
connection timeouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from almat.schemas.section import ConfigError, load_yaml


def load_launchpad_spec(path: str | Path) -> dict[str, Any]:
    """The mapping of a LaunchPad file; its database ``name`` is required (FireWorks would else use
    ``fireworks`` without a word)."""
    spec = load_yaml(path, "LaunchPad file")
    if spec is None:
        raise ConfigError(f"{Path(path).expanduser()}: the LaunchPad file is empty (expected host, port, name)")
    if not spec.get("name"):
        raise ConfigError(f"{Path(path).expanduser()}: name: the LaunchPad file names no database "
                          "(set 'name: <database>', e.g. fireworks_almat)")
    return spec


def launchpad_host(spec: dict[str, Any]) -> str:
    """Host (and port) of a LaunchPad spec, without credentials."""
    host = str(spec.get("host") or "localhost")
    if spec.get("uri_mode") or host.startswith(("mongodb://", "mongodb+srv://")):
        return urlsplit(host).netloc.rsplit("@", 1)[-1] or host
    return f"{host}:{spec.get('port') or 27017}"


def launchpad_from_spec(spec: dict[str, Any], timeout_ms: int = 5000):
    """A FireWorks ``LaunchPad`` for a spec whose MongoDB calls give up after about ``timeout_ms``; it
    neither connects nor writes until used."""
    from fireworks import LaunchPad

    kwargs = {**(spec.get("mongoclient_kwargs") or {}), "serverSelectionTimeoutMS": timeout_ms,
              "connectTimeoutMS": timeout_ms}
    return LaunchPad.from_dict({**spec, "mongoclient_kwargs": kwargs})
