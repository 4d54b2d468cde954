"""Config files: YAML validated by pydantic v2, with `key.sub=value` overrides.

Every config file names its schema with a top-level `kind:` (models, zoo, demo, dna, sweep, ...).
A bad file fails at load time with one line, `file: dotted.path: what is wrong (allowed: ...)`,
raised as `ConfigError`; the CLI prints it and exits 2.

    >>> from cluster.config import load_config
    >>> cfg = load_config("configs/zoo.demo.yaml", overrides=["train.steps=50"])  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from cluster.capabilities import CONFIG_KINDS, ZOO_BUILDER


class UserError(Exception):
    """A problem with the user's input or environment, phrased as the one line they see.

    The CLI prints it without a traceback and exits 2; every layer's input errors derive from it
    (ConfigError, LoadError, StoreError, actors' ProbeError, ...)."""


class ConfigError(UserError, ValueError):
    """A config problem, already phrased as the one line the user sees."""


class YardModel(BaseModel):
    """Base of every config schema: unknown keys are errors, not silently ignored. `config_file`:
    the file `load_config` read it from (None when built in code)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    _config_file: str | None = PrivateAttr(default=None)

    @property
    def config_file(self) -> str | None:
        return self._config_file


STORE_ENV = "YARD_STORE"


def ray_job_scratch_dir() -> Path | None:
    """The working directory when this process is a Ray job's entrypoint running in the copy Ray
    made of `--working-dir` (under Ray's temporary dir: it vanishes with the cluster's temp
    files), else None."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        return None
    cwd = Path.cwd()
    return cwd if "runtime_resources" in cwd.parts or any(p.startswith("session_") for p in cwd.parts) else None


def check_durable_path(value: str, field: str, env: str | None = None) -> str:
    """A relative local path inside a Ray job's scratch working dir would be lost: refuse it with
    how to say where instead (an absolute path, s3://, or the `env` variable)."""
    if "://" in value or Path(value).is_absolute():
        return value
    scratch = ray_job_scratch_dir()
    if scratch is None:
        return value
    how = f"set {env} in the job's env_vars, or " if env else "set "
    raise ValueError(f"{value!r} is relative, and this Ray job runs in Ray's temporary copy of its working dir "
                     f"({scratch}), which is deleted with the cluster's temp files; {how}{field} to an absolute "
                     f"path or s3:// URI")


class StorageConfig(YardModel):
    """Where artifacts go: a local directory or `s3://bucket/prefix`. A relative local path (the
    laptop default `.yard`) gives way to `YARD_STORE` when it is set; inside a Ray job's temporary
    working dir it is refused (`check_durable_path`)."""

    uri: str = Field(".yard", validate_default=True)
    # Endpoint override for MinIO and other S3-compatible stores; AWS_ENDPOINT_URL works too.
    endpoint_url: str | None = None

    @field_validator("uri")
    @classmethod
    def _durable(cls, v: str) -> str:
        if "://" not in v and not Path(v).is_absolute() and os.environ.get(STORE_ENV):
            v = os.environ[STORE_ENV]
        return check_durable_path(v, "storage.uri", STORE_ENV)


class RayConfig(YardModel):
    """How a job reaches Ray: RAY_ADDRESS wins; otherwise a local Ray is started."""

    address: str | None = None
    dashboard: bool = True
    # Loopback unless configured otherwise: the dashboard and Serve run jobs for whoever reaches them.
    dashboard_host: str = "127.0.0.1"
    num_cpus: int | None = None
    num_gpus: int | None = None


class CostConfig(YardModel):
    """How a job's ledger is priced (cluster/capacity/prices.py): the price table and the market it runs on."""

    prices: str | None = Field(None, description="price table file (kind: prices); null: configs/prices.yaml")
    market: Literal["on_demand", "spot"] | None = Field(None, description="null: the price table's market")


class JobConfig(YardModel):
    """The block every job config shares (chat, dna, sweep, persona, serve): where artifacts go
    (`storage`), how Ray is reached (`ray`), and which models exist (`registry` files plus the
    toy `zoo`'s when a zoo config is named). `kind` is each job's own literal."""

    kind: str
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    zoo: str | None = Field(None, description="zoo config to build or reuse; its models join the registry")
    registry: list[str] = Field(default_factory=lambda: ["configs/models.yaml"], description="model registry "
                                "files (kind: models)")
    cost: CostConfig = Field(default_factory=CostConfig, description="price table and market of the job's ledger")

    def registry_paths(self) -> list[str]:
        """The registry files plus the zoo's registry when `zoo` names a zoo config (the zoo is
        built, or reused from its cache, first); ConfigError when there is neither."""
        paths = list(self.registry)
        if self.zoo:
            build_zoo = resolve_capability(ZOO_BUILDER)  # by name: cluster.models.zoo imports this module
            paths.append(str(build_zoo(load_config(self.zoo)).registry_path))
        if not paths:
            raise ConfigError(f"{self.kind}: registry: empty and no zoo configured (no model to run)")
        return paths


def resolve_capability(target: str) -> Any:
    """What a capability table's "module:name" entry names (cluster/capabilities.py), its module
    imported now: the table is how this floor reaches a job, kind or builder without importing it."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def schema_for_kind(kind: str) -> type[YardModel]:
    """The pydantic class for a config `kind`, resolved lazily from the capability table."""
    target = CONFIG_KINDS.get(kind)
    if target is None:
        raise KeyError(kind)
    return resolve_capability(target)


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set `a.b.c=value` entries (value parsed as YAML) into nested dicts and lists, in place;
    a numeric part indexes a list (`bases.0.steps=100`)."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: {part} is not an index of a list of {len(node)}")
                key = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(f"override {text!r}: {path[i - 1]} is not a mapping or list")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
    return data


def _allowed(err: dict) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    for bound in ("ge", "gt", "le", "lt"):
        if bound in ctx:
            return f" (allowed: {bound} {ctx[bound]})"
    if err.get("type") == "extra_forbidden":
        return " (unknown field)"
    return ""


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line for the first error; a count of the rest."""
    errors = exc.errors()
    err = errors[0]
    path = ".".join(str(p) for p in err["loc"]) or "<root>"
    bad = err.get("input")
    shown = repr(bad) if not isinstance(bad, dict) else "{...}"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = err["msg"].removeprefix("Value error, ")
    if "expected" in (err.get("ctx") or {}):
        msg = "not allowed"  # the allowed values follow; pydantic's message would repeat them
    more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
    return f"{source}: {path}: {shown}: {msg}{_allowed(err)}{more}"


@contextlib.contextmanager
def naming_source(source: str):
    """Inside: a UserError that does not yet start with `source` (the config file) is raised
    again as a ConfigError that does, so a check deep in a job still names the file."""
    try:
        yield
    except UserError as exc:
        if str(exc).startswith(source):
            raise
        raise ConfigError(f"{source}: {exc}") from None


def read_text(path: str | Path, what: str = "file", error: type[Exception] = None) -> str:
    """A UTF-8 text file's contents. Missing, unreadable (a directory, no permission) or not UTF-8
    (a binary, a Latin-1 export): one line naming the file, raised as `error` (ConfigError)."""
    error = error or ConfigError
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                    f"is it a {what}?") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def jsonl_rows(text: str, path: str | Path, error: type[Exception] = None) -> list[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of a JSONL file's `text`; a line that
    is not JSON raises `error` (ConfigError) naming `path:line` and what is wrong."""
    error = error or ConfigError
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file is a ConfigError."""
    path = Path(path)
    text = read_text(path, "config file")
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(text)} characters; a config file is at most {MAX_CONFIG_BYTES} "
                          f"(data belongs in a data file the config names)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested more than Python can parse") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    check_expansion(data, str(path))
    return data


# A config is read by people: a few thousand values. Aliases (`&a` ... `*a`) are shared objects
# once parsed, but a manifest, a Ray job's runtime env or a report writes them out in full:
# nine aliases of nine can stand for 10^9 values in a few hundred bytes ("billion laughs").
MAX_CONFIG_BYTES = 1_000_000
MAX_EXPANDED_NODES = 200_000


def check_expansion(data: Any, source: str, limit: int = MAX_EXPANDED_NODES) -> int:
    """The number of values `data` holds written out in full (aliases expanded); ConfigError when
    it exceeds `limit` or an alias refers to a mapping or list that contains it (a cycle)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any, where: str) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{source}: {where or '<root>'}: a YAML alias refers to a value that contains "
                              f"it (a cycle)")
        active.add(key)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        total = 1
        for k, v in items:
            total += size(v, f"{where}.{k}" if where else str(k))
            if total > limit:
                raise ConfigError(f"{source}: {where or '<root>'}: YAML aliases expand to more than {limit} "
                                  f"values (an alias bomb?); write the config out plainly")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        return size(data, "")
    except RecursionError:
        raise ConfigError(f"{source}: nested more than Python can walk") from None


def validate(data: dict, schema: type[YardModel], source: str) -> YardModel:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_config(
    path: str | Path,
    schema: type[YardModel] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> YardModel:
    """Load and validate one config file; `schema` defaults to the class its `kind:` names."""
    data = read_yaml(path)
    kind = data.get("kind")
    if schema is None:
        if kind is None:
            raise ConfigError(f"{path}: kind: missing (allowed: {', '.join(sorted(CONFIG_KINDS))})")
        try:
            schema = schema_for_kind(kind)
        except KeyError:
            raise ConfigError(
                f"{path}: kind: {kind!r} is not a config kind (allowed: {', '.join(sorted(CONFIG_KINDS))})"
            ) from None
    apply_overrides(data, list(overrides))
    cfg = validate(data, schema, str(path))
    # Remember where it came from: reports cite the file, and relative paths inside it resolve
    # against it when they are not found from the working directory (resolve_config_path).
    cfg._config_file = str(path)
    return cfg


def resolve_config_path(path: str | Path, config_file: str | Path | None, *, roots: tuple[Path, ...] = ()) -> Path:
    """Where a path written in a config points: `~` expanded; an absolute path as is; else the first
    place it exists among the working directory, the config file's folder and `roots` (the
    repository, for demo configs run from anywhere); else under the config file's folder (so an
    error names where it was looked for), or as given when there is no config file."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    base = [Path(config_file).resolve().parent] if config_file else []
    for folder in [*base, *roots]:
        if (folder / p).exists():
            return folder / p
    return base[0] / p if base else p


def check_paths(paths: list[str]) -> list[tuple[str, str | None]]:
    """Validate files and directories of YAML configs: [(file, error or None)]."""
    results: list[tuple[str, str | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml"))
        elif p.exists():
            files = [p]
        else:
            results.append((raw, f"{raw}: no such file or directory"))
            continue
        for f in files:
            try:
                load_config(f)
                results.append((str(f), None))
            except ConfigError as exc:
                results.append((str(f), str(exc)))
    return results


def job_parser(prog: str, description: str, default_config: str | Path | None = None,
               config_help: str = "the job's config file") -> argparse.ArgumentParser:
    """The command line every job shares: `CONFIG [key.sub=value ...]` (CONFIG may be left out when
    the job has a demo config), `--set key.sub=value` as an alias of a bare override; the job adds
    its own flags, which may come anywhere (parse with `parse_intermixed_args`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if default_config is not None:
        parser.add_argument("config", nargs="?", default=str(default_config), help=f"{config_help} (default: "
                            f"{Path(default_config).name})")
        parser.set_defaults(default_config=str(default_config))
    else:
        parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides: key.sub=value")
    parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="the same as a KEY=VALUE argument")
    return parser


def job_source(args: argparse.Namespace) -> tuple[str, list[str]]:
    """(config file, overrides in order) of a `job_parser` command line. Without CONFIG, a first
    `key=value` (which argparse takes for CONFIG) is an override of the job's default config."""
    config, overrides = args.config, [*args.overrides, *args.set_overrides]
    default = getattr(args, "default_config", None)
    if default and config != default and "=" in config and not Path(config).exists():
        config, overrides = default, [args.config, *overrides]
        args.config, args.overrides, args.set_overrides = config, overrides, []  # what callers read after
    return config, overrides


def job_config(args: argparse.Namespace, schema: type[YardModel]) -> YardModel:
    """The validated config of a `job_parser` command line: the file, then its overrides in order."""
    config, overrides = job_source(args)
    return load_config(config, schema, overrides)
