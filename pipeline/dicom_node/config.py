"""The node's YAML configuration: keys, defaults, and errors that name the bad key and value.

```yaml
ae_title: LUNGSEG
host: 127.0.0.1
port: 11112
spool_dir: ./spool
idle_seconds: 5
destinations:
  - {ae_title: PACS, host: 127.0.0.1, port: 11113}
```

Optional keys: ``allowed_calling_aets`` (list; absent = any caller), ``output_dir`` (also
write results there), ``sr`` (also send a TID 1500 measurement report), ``bundle``,
``device``, ``retries``/``retry_seconds`` (sending), ``selection`` (``modalities``,
``exclude_view_positions``, ``exclude_image_types``), ``dicomweb`` (``{url: ...}``: also
store the results by STOW-RS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

#: Modalities accepted for segmentation by default (secondary capture included).
DEFAULT_MODALITIES = ("CR", "DX", "OT")
DEFAULT_EXCLUDED_VIEWS = ("LL", "RL", "LATERAL", "LLD", "RLD")


class ConfigError(ValueError):
    """A configuration mistake; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to by C-STORE."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Selection:
    """Which received images are segmented (the others are logged as skipped, with the rule)."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    exclude_view_positions: tuple[str, ...] = DEFAULT_EXCLUDED_VIEWS
    exclude_image_types: tuple[str, ...] = ("LOCALIZER",)


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``lungseg node`` needs (see the module docstring for the YAML)."""

    ae_title: str = "LUNGSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    spool_dir: Path = Path("spool")
    idle_seconds: float = 5.0
    destinations: tuple[Destination, ...] = ()
    allowed_calling_aets: tuple[str, ...] | None = None
    output_dir: Path | None = None
    sr: bool = False
    bundle: Path | None = None
    device: str = "auto"
    retries: int = 5
    retry_seconds: float = 2.0
    selection: Selection = field(default_factory=Selection)
    dicomweb_url: str | None = None


def _ae_title(value: Any, where: str) -> str:
    text = str(value).strip()
    if not 1 <= len(text) <= 16 or "\\" in text or not text.isprintable():
        raise ConfigError(f"{where}: AE title {value!r} must be 1-16 printable characters")
    return text


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: port {value!r} must be an integer in 1..65535")
    return value


def _destination(raw: Any, where: str) -> Destination:
    if not isinstance(raw, dict) or set(raw) - {"ae_title", "host", "port"} or len(raw) != 3:
        raise ConfigError(f"{where}: {raw!r} must be {{ae_title, host, port}}")
    return Destination(
        _ae_title(raw["ae_title"], where), str(raw["host"]), _port(raw["port"], where)
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {value!r} must be a list of strings")
    return tuple(v.upper() for v in value)


def _selection(raw: Any, where: str) -> Selection:
    allowed = {f.name for f in fields(Selection)}
    if not isinstance(raw, dict) or set(raw) - allowed:
        raise ConfigError(
            f"{where}: unknown keys {sorted(set(raw) - allowed)}; allowed: {sorted(allowed)}"
        )
    return Selection(**{k: _strings(v, f"{where}.{k}") for k, v in raw.items()})


def parse_config(raw: dict[str, Any], source: str = "config", base: Path = Path()) -> NodeConfig:
    """Validate a loaded YAML mapping; relative paths are resolved against ``base``.

    Raises:
        ConfigError: an unknown key or a bad value (named, with what is allowed).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    known = {f.name for f in fields(NodeConfig)} - {"dicomweb_url"} | {"dicomweb"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        out.update(_field(key, value, f"{source}: {key}", base))
    if not any(out.get(k) for k in ("destinations", "output_dir", "dicomweb_url")):
        raise ConfigError(
            f"{source}: give destinations, output_dir or dicomweb: results need a place to go"
        )
    return NodeConfig(**out)


def _field(key: str, value: Any, where: str, base: Path) -> dict[str, Any]:
    if key == "ae_title":
        return {key: _ae_title(value, where)}
    if key == "port":
        return {key: _port(value, where)}
    if key in ("spool_dir", "output_dir", "bundle"):
        return {key: None if value is None else (base / str(value)).resolve()}
    if key in ("idle_seconds", "retry_seconds"):
        if not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: {value!r} must be a number of seconds >= 0")
        return {key: float(value)}
    if key == "retries":
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {value!r} must be an integer >= 0")
        return {key: value}
    if key == "destinations":
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {value!r} must be a list of {{ae_title, host, port}}")
        return {key: tuple(_destination(d, f"{where}[{i}]") for i, d in enumerate(value))}
    if key == "allowed_calling_aets":
        return {key: None if value is None else tuple(_ae_title(v, where) for v in value)}
    if key == "selection":
        return {key: _selection(value, where)}
    if key == "dicomweb":
        url = value.get("url") if isinstance(value, dict) else None
        if set(value or {}) != {"url"} or not str(url).startswith(("http://", "https://")):
            raise ConfigError(f"{where}: {value!r} must be {{url: http(s)://host/dicomweb}}")
        return {"dicomweb_url": str(url)}
    if key == "sr":
        return {key: bool(value)}
    return {key: str(value)}  # host, device


def load_config(path: str | os.PathLike) -> NodeConfig:
    """Read and validate a node YAML file.

    Raises:
        FileNotFoundError: no such file. ConfigError: invalid YAML or content.
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return parse_config(raw or {}, str(path), path.parent)
