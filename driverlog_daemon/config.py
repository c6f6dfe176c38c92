"""Configuration: TOML file + ``DRIVERLOG_<SECTION>_<KEY>`` environment overrides, every key optional.

The section and key names are a public interface (docs/configuration.md). Unknown keys and wrong types are
errors naming the key (``ConfigError.key``), so that ``check-config`` and ``run`` can exit 2 with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit  # (pathlib has imported urllib.parse already: free at start-up)

from driverlog_daemon.registry.checks import DEFAULT_REGISTRY_PATH

DEFAULT_CONFIG_PATH = Path("/etc/driverlog/driverlog.toml")
ENV_PREFIX = "DRIVERLOG_"


class ConfigError(Exception):
    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class GerritConfig(NamedTuple):
    host: str = ""
    port: int = 29418
    username: str = ""
    key_file: str = ""
    known_hosts: str = "~/.ssh/known_hosts"
    host_key_policy: str = "strict"  # strict | accept-new
    keepalive_seconds: float = 30.0
    connect_timeout_seconds: float = 15.0
    stall_timeout_seconds: float = 300.0
    backfill_max_age_hours: float = 168.0
    backfill_overlap_minutes: float = 10.0
    reconnect_max_delay_seconds: float = 60.0
    max_event_bytes: int = 16 * 1024 * 1024
    max_queries_per_minute: int = 120
    subscribe: tuple[str, ...] = ("comment-added", "patchset-created", "change-merged", "change-abandoned",
                                  "change-restored")


class RegistryConfig(NamedTuple):
    path: str = str(DEFAULT_REGISTRY_PATH)
    url: str = ""  # https://, http:// or file://: the registry's source, read instead of path (docs/registry.md)
    refresh_seconds: float = 300.0  # the url asked again this often (conditionally; 0: only at start, on follow)
    follow_project: str = ""  # a change merged in this Gerrit project (x/driverlog) has the url asked at once
    timeout_seconds: float = 30.0  # an answer must be whole within this
    max_bytes: int = 16 * 1024 * 1024  # a larger answer is refused


class DatabaseConfig(NamedTuple):
    path: str = "driverlog.sqlite"
    max_queued_bytes: int = 64 * 1024 * 1024  # stream blocks read and not yet examined: the reader waits past it


class HttpConfig(NamedTuple):
    enabled: bool = True  # run starts and supervises the web tier
    listen: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # web tier processes; 0: the CPUs available
    threads: int = 64  # threads per worker: a slow client holds one until client_timeout_seconds, no more
    client_timeout_seconds: float = 10.0  # a request must be read and answered within this
    export_timeout_seconds: float = 120.0  # a streamed export must be taken within this, in all
    max_exports: int = 4  # streamed exports at once per worker; past it 503 with Retry-After
    max_age_seconds: int = 5  # Cache-Control max-age of answers computed from the database
    stale_while_revalidate_seconds: int = 30
    max_staleness_seconds: float = 5.0  # an answer is never older than this behind the database


class StatusConfig(NamedTuple):
    stale_after_days: float = 7.0


class HealthConfig(NamedTuple):
    silence_days: float = 14.0  # Cinder's rule: no success this long puts a driver at risk


class HistoryConfig(NamedTuple):
    """What the daemon imports from Gerrit's history (docs/history.md)."""

    enabled: bool = True  # the first start's import and each registry change's queries (false: none; a registry
    #                       change still judges again the comments the file holds)
    days: float = 90.0  # the window: every CI comment and merge of these days (the health measures reach 90)
    mark_search_days: float = 0.0  # how far back the mark search may go (0: no limit, as DriverLog)


class WebhookConfig(NamedTuple):
    """One ``[[webhook]]`` table: where mark transitions are POSTed, signed, and which ones."""

    name: str = ""  # names its outbox rows and metrics; default webhook-<n> by position (set one: it is a key)
    url: str = ""
    secret_file: str = ""  # the HMAC key; or secret_credential, a systemd credential's name
    secret_credential: str = ""
    format: str = "json"  # json | slack
    project_id: tuple[str, ...] = ()  # filters: a transition passes when every filter given has its value
    vendor: tuple[str, ...] = ()
    driver: tuple[str, ...] = ()  # driver names or ids
    release: tuple[str, ...] = ()  # release ids, any case
    timeout_seconds: float = 10.0
    retry_for_hours: float = 72.0  # then a delivery is dead
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0

    def shown(self) -> str:
        """The URL without its path or query (a Slack URL's path is its credential): what logs and check-config show."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"


class LogConfig(NamedTuple):
    level: str = "info"
    format: str = "auto"  # auto | json | console


class Config(NamedTuple):
    gerrit: GerritConfig = GerritConfig()
    registry: RegistryConfig = RegistryConfig()
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    status: StatusConfig = StatusConfig()
    health: HealthConfig = HealthConfig()
    history: HistoryConfig = HistoryConfig()
    log: LogConfig = LogConfig()
    webhooks: tuple[WebhookConfig, ...] = ()  # the TOML's [[webhook]] tables
    source: str = "defaults"

    def redacted(self) -> dict[str, dict[str, Any]]:
        """The effective configuration as a dict, safe to print (no secrets are stored in it; paths only)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self._fields:
            if name in ("source", "webhooks"):
                continue
            section = getattr(self, name)
            out[name] = {k: getattr(section, k) for k in section._fields}
        for hook in self.webhooks:
            out[f"webhook {hook.name}"] = {**hook._asdict(), "url": hook.shown()}
        return out


_CHOICES = {
    ("gerrit", "host_key_policy"): ("strict", "accept-new"),
    ("log", "format"): ("auto", "json", "console"),
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("webhook", "format"): ("json", "slack"),
}


def _coerce(section: str, key: str, value: Any, default: Any, from_env: bool) -> Any:
    name = f"{section}.{key}"
    if isinstance(default, tuple):
        if from_env and isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(name, f"expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, bool):
        if from_env and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if from_env:
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(name, f"expected an integer, got {value!r}") from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(name, f"expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(name, f"must not be negative, got {value}")
        return value
    if isinstance(default, float):
        if from_env:
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(name, f"expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(name, f"must not be negative, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(name, f"expected a string, got {value!r}")
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def build_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None, source: str = "") -> Config:
    config = Config(source=source or "defaults")
    sections = {name for name in Config._fields if name not in ("source", "webhooks")}
    for section_name, values in data.items():
        if section_name == "webhook":
            config = config._replace(webhooks=_webhooks(values))
            continue
        if section_name not in sections:
            raise ConfigError(section_name, "unknown section")
        if not isinstance(values, dict):
            raise ConfigError(section_name, "expected a table")
        section = getattr(config, section_name)
        known = section._fields
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{section_name}.{key}", "unknown key")
            changes[key] = _coerce(section_name, key, value, getattr(section, key), from_env=False)
        config = config._replace(**{section_name: section._replace(**changes)})
    for var, value in (env or {}).items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section_name, _, key = rest.partition("_")
        if section_name not in sections:
            continue  # DRIVERLOG_CONFIG and friends are not configuration keys
        section = getattr(config, section_name)
        if key not in section._fields:
            raise ConfigError(f"{section_name}.{key}", f"unknown key (from environment variable {var})")
        coerced = _coerce(section_name, key, value, getattr(section, key), from_env=True)
        config = config._replace(**{section_name: section._replace(**{key: coerced})})
    if config.http.threads < 1:
        raise ConfigError("http.threads", f"must be at least 1, got {config.http.threads}")
    r = config.registry
    if r.url and (urlsplit(r.url).scheme not in ("http", "https", "file") or (not urlsplit(r.url).netloc
                  and urlsplit(r.url).scheme != "file")):
        raise ConfigError("registry.url", f"must be an https://, http:// or file:// URL, got {r.url!r}")
    if r.follow_project and not r.url:
        raise ConfigError("registry.follow_project", "needs registry.url (a merge there has the url asked again)")
    if r.refresh_seconds < 0 or r.timeout_seconds <= 0 or r.max_bytes <= 0:
        raise ConfigError("registry.refresh_seconds", "refresh_seconds ≥ 0, timeout_seconds and max_bytes > 0")
    return _with_credentials(config, env or {})


def _webhooks(tables: Any) -> tuple[WebhookConfig, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError("webhook", "expected [[webhook]] tables")
    hooks: list[WebhookConfig] = []
    for index, table in enumerate(tables):
        where = f"webhook[{index}]"
        changes: dict[str, Any] = {}
        for key, value in table.items():
            if key not in WebhookConfig._fields:
                raise ConfigError(f"{where}.{key}", "unknown key")
            default = WebhookConfig._field_defaults[key]
            if isinstance(default, tuple) and isinstance(value, str):
                value = [value]  # a filter of one value
            try:
                changes[key] = _coerce("webhook", key, value, default, from_env=False)
            except ConfigError as exc:
                raise ConfigError(f"{where}.{key}", str(exc).partition(": ")[2]) from None
        hook = WebhookConfig(**changes)
        if not hook.name:
            hook = hook._replace(name=f"webhook-{index + 1}")
        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}.url", f"must be an http:// or https:// URL, got {hook.shown()!r}")
        if any(c.isspace() or not c.isprintable() for c in hook.url):  # http.client refuses it at each delivery
            raise ConfigError(f"{where}.url", f"must not hold spaces or control characters, got {hook.shown()!r}")
        if "@" in parts.netloc:  # http.client would drop them silently; the signature is the credential
            raise ConfigError(f"{where}.url", "must not hold user:password@ (the receiver checks the signature, "
                                              f"made with secret_file or secret_credential), got {hook.shown()!r}")
        if bool(hook.secret_file) == bool(hook.secret_credential):
            raise ConfigError(f"{where}.secret_file", "give secret_file or secret_credential (one of them)")
        if hook.timeout_seconds <= 0:
            raise ConfigError(f"{where}.timeout_seconds", "must be positive")
        if any(h.name == hook.name for h in hooks):
            raise ConfigError(f"{where}.name", f"{hook.name!r} is already the name of another webhook")
        hooks.append(hook)
    return tuple(hooks)


def webhook_secret(hook: WebhookConfig, env: Mapping[str, str] | None = None) -> bytes:
    """The hook's HMAC key: its ``secret_file``, or its systemd credential; surrounding white space dropped."""
    env = os.environ if env is None else env
    if hook.secret_file:
        path = Path(hook.secret_file).expanduser()
    else:
        creds = env.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(f"webhook {hook.name}.secret_credential",
                              "no $CREDENTIALS_DIRECTORY (set LoadCredential= in the unit)")
        path = Path(creds) / hook.secret_credential
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"webhook {hook.name}.secret", f"{path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"webhook {hook.name}.secret", f"{path}: empty")
    return secret


def _with_credentials(config: Config, env: Mapping[str, str]) -> Config:
    """systemd ``LoadCredential=gerrit-key:…``: used when ``key_file`` is unset."""
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not config.gerrit.key_file and creds and (Path(creds) / "gerrit-key").exists():
        return config._replace(gerrit=config.gerrit._replace(key_file=str(Path(creds) / "gerrit-key")))
    return config


def text_byte(exc: UnicodeDecodeError) -> str:
    return f"0x{exc.object[exc.start]:02x}" if exc.start < len(exc.object) else "missing"


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (the default path may be absent; an explicit one must exist) and apply ``env``."""
    env = os.environ if env is None else env
    explicit = path is not None
    p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError("config", f"{p}: file not found") from None
        return build_config({}, env, source="(defaults)")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{p}: not UTF-8 text (byte {exc.start} is {text_byte(exc)})") from None
    except OSError as exc:
        raise ConfigError("config", f"{p}: cannot read: {exc.strerror or exc}") from None
    import tomllib  # only when there is a file to read

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p}: invalid TOML: {exc}") from None
    return build_config(data, env, source=str(p))
