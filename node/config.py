"""The node's configuration: one YAML file read into validated, frozen dataclasses.

Every setting has a default that works on one machine with nothing else installed
(``load_config(None)``). Errors name the key path and the problem, and unknown keys get a
suggestion::

    config: node.port: must be an integer 1-65535, got 'abc'
    config: node: unknown key 'prot' (did you mean 'port'?)

The file, with every section and its default::

    node:
      ae_title: NEUROREAD          # our AE title (1-16 characters)
      host: 127.0.0.1              # listen address (0.0.0.0: every interface)
      port: 11112
      require_called_ae: true      # the called AE title must be ours
      max_associations: 10
      peers: []                    # [{ae_title: PACS, address: 10.0.0.5}]; empty: anyone
      tls: null                    # {cert: node.pem, key: node.key, ca: peers-ca.pem}
    storage:
      root: neuroread-data         # relative paths are relative to this file's folder
      spool: null                  # null: <root>/spool
      outbox: null                 # null: <root>/outbox
      quarantine: null             # null: <root>/quarantine (spooled files start-up could not use)
    assemble:
      stable_age_s: 30             # a series is complete after this quiet period
      study_quiet_s: null          # a study (multi-series models) after this one; null: stable_age_s
      early_completion: true       # ... or sooner when its headers say it is complete
    routes: []                     # passed untouched to neuroread.node.route.rules.load_routes
    models: {}                     # name: {enabled: true, weights: path|null, device: cpu, thresholds: {label: 0.4}}
                                   # enabled: false: the model is not routed to; weights null: the
                                   # demo weights committed with it (or $NEUROREAD_WEIGHTS/<name>-demo.pt);
                                   # thresholds override the operating points in the weights' card
    destinations: {}               # name: {type: dicom|folder|stowrs|orthanc, ...}, e.g.
                                   # pacs: {type: dicom, host: pacs, port: 104, called_ae: PACS}
    deliver:
      interval_s: 5                # how often the outbox is tried (and at once when a job ends)
      retry_base_s: 30             # first retry after a failed send; then x retry_factor ...
      retry_factor: 2
      retry_cap_s: 3600            # ... up to this
    queue:
      backend: embedded            # embedded: in-process workers; celery: `neuroread worker` processes
                                   # on any machine, dispatched through Redis (see the README, "Scale out")
      database: null               # SQLAlchemy URL; null: sqlite:///<root>/state.db. Several machines:
                                   # postgresql+psycopg://user:password@host/neuroread (every node and worker)
      broker: null                 # celery: redis://host:6379/0 (required)
      workers: 1                   # embedded: worker threads; celery: processes per `neuroread worker`
      torch_threads: null          # null: torch's default
      lease_s: 60                  # a running job's lease, renewed every lease_s/3 while it runs;
                                   # a worker that dies loses its jobs to another after this
      max_attempts: 3              # claims per job before it ends failed (a job that kills its worker)
      retry_s: 30                  # a retryable failure waits this long, doubled per attempt (max 1 h)
      time_limit_s: 3600           # celery: a job running longer is killed (and counts an attempt)
      sweep_s: 5                   # celery: how often the node recovers expired leases and
      republish_s: 120             # ... re-publishes claimable jobs not published for this long
    status: null                   # the status page and Prometheus /metrics (HTTP); null: off. When on:
      # host: 127.0.0.1            # beyond loopback a login is required (users or users_env)
      # port: 8088
      # users: {}                  # HTTP basic credentials, name: password
      # users_env: {}              # name: environment variable holding the password
    dicomweb: null                 # the STOW-RS receiver (neuroread.node.receive.stow); null: off. When on:
      # host: 127.0.0.1
      # port: 8080
      # base_path: /dicomweb       # POST <base_path>/studies[/<StudyInstanceUID>]
      # users: {pacs: s3cret}      # HTTP basic credentials, name: password
      # users_env: {}              # name: environment variable holding the password
      # tokens: []                 # HTTP bearer tokens
      # tokens_env: []             # environment variables holding bearer tokens
      # allow_anonymous: false     # true: no credentials asked (then give no users/tokens)
      # max_body_mb: 512           # a larger Content-Length is answered 413, body unread
      # max_requests: 4            # uploads at once; one more is answered 503
      # tls: null                  # {cert: web.pem, key: web.key, ca: clients-ca.pem} (HTTPS)
      # peers: []                  # addresses/networks allowed to connect, e.g. [10.0.0.0/8]; empty: any
    plugins: []                    # extra models, 'package.module:NAME' where NAME is a
                                   # neuroread.models.ModelEntry or a list of them (your own networks;
                                   # the module must be importable, e.g. via PYTHONPATH)

``Config.to_dict()`` gives the effective configuration (defaults filled in) as plain data.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DESTINATION_TYPES = {  # type -> required keys (besides ``type``)
    "dicom": ("host", "port", "called_ae"),  # the deliver stage's DicomDestination keys
    "folder": ("path",),
    "stowrs": ("url",),
    "orthanc": ("url",),
}
QUEUE_BACKENDS = ("embedded", "celery")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_URL = re.compile(r"^https?://[^\s/]+")
_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_BASIC_USER = re.compile(r"[^:\x00-\x1f\x7f]+")  # RFC 7617: a user-id holds no ':' or control characters
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BROKER = re.compile(r"^rediss?://[^\s]*$")
_BASE_PATH = re.compile(r"/|(/[A-Za-z0-9\-._~!$&'()*+,;=:@%]+)+")


HIDDEN = "<hidden>"


class ConfigError(ValueError):
    """An invalid configuration; the message names the key path and the problem."""


class _Section:
    """A mapping being read: typed getters that record which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: {path or 'top level'}: must be a mapping, got {_show(data)}")
        self.data, self.path, self.used = data, path, set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"config: {self.where(key)}: {problem}")

    def get(self, key: str, default: Any, check: Callable[[Any], bool], problem: str) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if value is None and default is None:
            return None
        if not check(value):
            raise self.fail(key, f"{problem}, got {_show(value)}")
        return value

    def str(self, key: str, default: str | None) -> str | None:
        return self.get(key, default, lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty string")

    def int(self, key: str, default: int | None, lo: int, hi: int | None = None) -> int | None:
        span = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        return self.get(key, default, lambda v: isinstance(v, int) and not isinstance(v, bool)
                        and lo <= v and (hi is None or v <= hi), f"must be an integer {span}")

    def bool(self, key: str, default: bool) -> bool:
        return self.get(key, default, lambda v: isinstance(v, bool), "must be true or false")

    def ae(self, key: str, default: str | None) -> str | None:
        return self.get(key, default, _is_ae, "must be an AE title of 1-16 characters without '\\' or control characters")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        return self.get(key, default, lambda v: v in choices, f"must be one of {', '.join(choices)}")

    def path_(self, key: str, default: Path | None, base: Path) -> Path | None:
        value = self.str(key, None if default is None else str(default))
        return None if value is None else _resolve(value, base)

    def finish(self, known: tuple[str, ...] | None = None) -> None:
        allowed = set(known) if known is not None else self.used
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
                where = f"{self.path}: " if self.path else ""
                raise ConfigError(f"config: {where}unknown key {key!r}{hint}")


def _show(value: object) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _is_ae(v: object) -> bool:
    return (isinstance(v, str) and 0 < len(v.strip()) <= 16 and "\\" not in v
            and all(32 <= ord(c) < 127 for c in v))


def _resolve(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


@dataclass(frozen=True)
class PeerConfig:
    """An allowed peer: calling AE title and/or address (IP or network); ``None`` is any."""

    ae_title: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    """DICOM-TLS: our certificate and key; ``ca`` set: peers must present a certificate it signed."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = "NEUROREAD"
    host: str = "127.0.0.1"
    port: int = 11112
    require_called_ae: bool = True
    max_associations: int = 10
    peers: tuple[PeerConfig, ...] = ()
    tls: TLSConfig | None = None


@dataclass(frozen=True)
class StorageConfig:
    root: Path
    spool: Path
    outbox: Path
    quarantine: Path = Path("neuroread-data/quarantine")


@dataclass(frozen=True)
class AssembleConfig:
    """``stable_age_s``: a series is complete after this much silence (or sooner when its headers
    say so); ``study_quiet_s``: a study (what a model of several series waits for) after this
    much silence from all its series, at least ``stable_age_s`` (``None``: the same)."""

    stable_age_s: float = 30.0
    early_completion: bool = True
    study_quiet_s: float | None = None


@dataclass(frozen=True)
class DeliverConfig:
    """The outbox's rhythm: try every ``interval_s``; after n failures wait
    ``min(retry_cap_s, retry_base_s * retry_factor**(n-1))``."""

    interval_s: float = 5.0
    retry_base_s: float = 30.0
    retry_factor: float = 2.0
    retry_cap_s: float = 3600.0


@dataclass(frozen=True)
class ModelConfig:
    """One model's settings: switched on or off, weights file (``None``: its demo weights), device,
    threshold overrides."""

    weights: Path | None = None
    device: str = "cpu"
    thresholds: dict[str, float] = field(default_factory=dict)
    enabled: bool = True


@dataclass(frozen=True)
class QueueConfig:
    """The job queue (:mod:`neuroread.node.jobs`): where jobs live and who runs them.

    ``embedded``: ``workers`` threads in the node. ``celery``: the node publishes job ids to
    ``broker`` (Redis) and ``neuroread worker`` processes (``workers`` children each) claim them
    in ``database`` with a lease of ``lease_s``; every ``sweep_s`` the node recovers expired leases
    and re-publishes claimable jobs whose message was last sent more than ``republish_s`` ago.
    """

    database: str
    backend: str = "embedded"
    broker: str | None = None
    workers: int = 1
    torch_threads: int | None = None
    lease_s: float = 60.0
    max_attempts: int = 3
    time_limit_s: float = 3600.0
    sweep_s: float = 5.0
    republish_s: float = 120.0
    retry_s: float = 30.0


@dataclass(frozen=True)
class StatusConfig:
    """The status page and Prometheus ``/metrics`` endpoint (:mod:`neuroread.node.status`).

    ``users`` (name -> password) and ``users_env`` (name -> environment variable) are HTTP basic
    credentials; at least one is required when ``host`` is not a loopback address.
    """

    host: str = "127.0.0.1"
    port: int = 8088
    users: dict[str, str] = field(default_factory=dict, repr=False)
    users_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DicomWebConfig:
    """The STOW-RS receiver (:mod:`neuroread.node.receive.stow`): listen address, base path and who may store.

    ``users`` (name -> password, HTTP basic) and ``tokens`` (HTTP bearer) are the credentials
    accepted; ``users_env`` (name -> environment variable) and ``tokens_env`` (environment
    variables) name secrets kept out of the file, read when the receiver is built. At least one
    credential is required unless ``allow_anonymous``. ``max_body_mb`` bounds one request's
    body, ``max_requests`` the uploads served at once. ``tls``: HTTPS with this certificate and
    key (``ca`` set: clients must present a certificate it signed). ``peers``: the addresses or
    networks allowed to connect (empty: any), checked before the credentials. Secrets stay out
    of ``repr``.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/dicomweb"
    users: dict[str, str] = field(default_factory=dict, repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)
    users_env: dict[str, str] = field(default_factory=dict)
    tokens_env: tuple[str, ...] = ()
    allow_anonymous: bool = False
    max_body_mb: int = 512
    max_requests: int = 4
    tls: TLSConfig | None = None
    peers: tuple[str, ...] = ()  # IP addresses or networks allowed to connect; empty: any


@dataclass(frozen=True)
class Config:
    """The whole node configuration. ``routes`` and ``destinations`` stay plain data
    (``neuroread.node.route.rules.load_routes`` and the deliver stage build their objects); treat them as
    read-only."""

    node: NodeConfig
    storage: StorageConfig
    assemble: AssembleConfig
    queue: QueueConfig
    routes: tuple[dict, ...] = ()
    models: dict[str, ModelConfig] = field(default_factory=dict)
    destinations: dict[str, dict] = field(default_factory=dict)
    dicomweb: DicomWebConfig | None = None
    plugins: tuple[str, ...] = ()
    deliver: DeliverConfig = DeliverConfig()
    status: StatusConfig | None = None

    def to_dict(self, *, hide_secrets: bool = False) -> dict[str, Any]:
        """The effective configuration as plain YAML-ready data (paths as strings).

        ``hide_secrets``: passwords and tokens written in the file (the STOW-RS receiver's
        ``users``/``tokens``, destinations' ``password``/``token``) shown as ``<hidden>``, for
        printing (``neuroread config check``); the ``*_env`` names are shown as they are."""
        data = _plain(dataclasses.asdict(self))
        if hide_secrets:
            web = data.get("dicomweb")
            if web:
                web["users"] = {name: HIDDEN for name in web["users"]}
                web["tokens"] = [HIDDEN for _ in web["tokens"]]
            if data.get("status"):
                data["status"]["users"] = {name: HIDDEN for name in data["status"]["users"]}
            for dest in data["destinations"].values():
                for key in ("password", "token"):
                    if dest.get(key) is not None:
                        dest[key] = HIDDEN
        return data

    def disabled_models(self) -> set[str]:
        """The models switched off (``models: {name: {enabled: false}}``)."""
        return {name for name, m in self.models.items() if not m.enabled}

    def check_models(self, specs: Mapping[str, Any]) -> None:
        """Check model names and threshold labels against ``specs`` (name -> ModelSpec)."""
        for name, model in self.models.items():
            if name not in specs:
                close = difflib.get_close_matches(name, sorted(specs), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(specs)) or 'none'})"
                raise ConfigError(f"config: models: unknown model {name!r}{hint}")
            labels = [lb.name for lb in specs[name].labels]
            for label in model.thresholds:
                if label not in labels:
                    raise ConfigError(f"config: models.{name}.thresholds: {name} has no label {label!r} (labels: {', '.join(labels)})")


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def load_config(path: Path | None) -> Config:
    """Read and validate the YAML file at ``path``; ``None`` gives every default.

    Relative paths in the file are relative to its folder (to the working directory when
    ``path`` is ``None``). Raises :class:`ConfigError` naming the key and the problem.
    """
    if path is None:
        return parse_config({}, Path.cwd())
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from exc
    return parse_config(data, path.resolve().parent)


def parse_config(data: object, base: Path) -> Config:
    """A :class:`Config` from already-parsed YAML data; relative paths resolve against ``base``."""
    top = _Section(data, "")
    top.finish(("node", "storage", "assemble", "routes", "models", "destinations", "deliver", "queue", "dicomweb",
                "plugins", "status"))
    node = _node(_Section(top.get("node", {}, lambda v: True, ""), "node"), base)
    storage = _Section(top.get("storage", {}, lambda v: True, ""), "storage")
    root = storage.path_("root", Path("neuroread-data"), base)
    store = StorageConfig(root, storage.path_("spool", root / "spool", base), storage.path_("outbox", root / "outbox", base),
                          storage.path_("quarantine", root / "quarantine", base))
    storage.finish()
    asm = _Section(top.get("assemble", {}, lambda v: True, ""), "assemble")
    assemble = AssembleConfig(
        asm.get("stable_age_s", 30.0, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                "must be a number of seconds > 0"),
        asm.bool("early_completion", True),
        asm.get("study_quiet_s", None, lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               and v > 0), "must be a number of seconds > 0 or null"))
    if assemble.study_quiet_s is not None and assemble.study_quiet_s < assemble.stable_age_s:
        raise ConfigError(f"config: assemble.study_quiet_s: must be at least assemble.stable_age_s "
                          f"({assemble.stable_age_s:g} s): a study is quiet only once its series are, got "
                          f"{assemble.study_quiet_s:g}")
    asm.finish()
    routes = top.get("routes", [], lambda v: isinstance(v, list), "must be a list of routes")
    for i, route in enumerate(routes):
        if not isinstance(route, Mapping):
            raise ConfigError(f"config: routes[{i}]: must be a mapping, got {_show(route)}")
    models = _models(top.get("models", {}, lambda v: isinstance(v, Mapping), "must be a mapping of model names"), base)
    destinations = _destinations(top.get("destinations", {}, lambda v: isinstance(v, Mapping),
                                         "must be a mapping of destination names"), base)
    queue = _queue(_Section(top.get("queue", {}, lambda v: True, ""), "queue"), root)
    web = top.get("dicomweb", None, lambda v: True, "")
    dicomweb = None if web is None else _dicomweb(_Section(web, "dicomweb"), base)
    plugins = top.get("plugins", [], lambda v: isinstance(v, list) and all(isinstance(x, str) and _PLUGIN.fullmatch(x) for x in v),
                      "must be a list of 'package.module:NAME' strings")
    deliver = _deliver(_Section(top.get("deliver", {}, lambda v: True, ""), "deliver"))
    raw_status = top.get("status", None, lambda v: True, "")
    status = None if raw_status is None else _status(_Section(raw_status, "status"))
    return Config(node, store, assemble, queue, tuple(dict(r) for r in routes), models, destinations, dicomweb,
                  tuple(plugins), deliver, status)


def _tls(raw: object, where: str, base: Path) -> TLSConfig:
    t = _Section(raw, where)
    for key in ("cert", "key"):
        if key not in t.data:
            raise ConfigError(f"config: {where}: missing key {key!r}")
    tls = TLSConfig(t.path_("cert", None, base), t.path_("key", None, base), t.path_("ca", None, base))
    t.finish()
    return tls


def _basic_users(s: _Section) -> tuple[dict[str, str], dict[str, str]]:
    """A section's HTTP basic credentials: ``users`` (name -> password) and ``users_env`` (name ->
    environment variable holding the password), no user in both."""
    users = s.get("users", {}, lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and bool(_BASIC_USER.fullmatch(k)) and isinstance(p, str) and p != "" for k, p in v.items()),
        "must be a mapping user name -> password (non-empty strings, names without ':')")
    users_env = s.get("users_env", {}, lambda v: isinstance(v, Mapping) and all(
        isinstance(k, str) and bool(_BASIC_USER.fullmatch(k)) and isinstance(e, str) and bool(_ENV_NAME.fullmatch(e))
        for k, e in v.items()), "must be a mapping user name -> environment variable name")
    both = sorted(set(users) & set(users_env))
    if both:
        raise s.fail("users_env", f"user {both[0]!r} is in {s.path}.users too: give one password")
    return dict(users), dict(users_env)


def _dicomweb(s: _Section, base: Path) -> DicomWebConfig:
    host, port = s.str("host", "127.0.0.1"), s.int("port", 8080, 1, 65535)
    base_path = s.get("base_path", "/dicomweb", lambda v: isinstance(v, str) and bool(_BASE_PATH.fullmatch(v)),
                      "must be a path starting with '/', without a trailing '/', query or spaces")
    users, users_env = _basic_users(s)
    tokens = s.get("tokens", [], lambda v: isinstance(v, list) and all(isinstance(t, str) and bool(_TOKEN.fullmatch(t))
                                                                      for t in v),
                   "must be a list of bearer tokens (letters, digits and -._~+/ then optional '=')")
    tokens_env = s.get("tokens_env", [], lambda v: isinstance(v, list) and all(
        isinstance(e, str) and bool(_ENV_NAME.fullmatch(e)) for e in v), "must be a list of environment variable names")
    anonymous = s.bool("allow_anonymous", False)
    limits = s.int("max_body_mb", 512, 1), s.int("max_requests", 4, 1)
    raw_tls = s.get("tls", None, lambda v: True, "")
    tls = None if raw_tls is None else _tls(raw_tls, "dicomweb.tls", base)
    peers = s.get("peers", [], lambda v: isinstance(v, list) and all(_is_network(x) for x in v),
                  "must be a list of IP addresses or networks like 10.0.0.0/8")
    s.finish()
    if anonymous and (users or tokens or users_env or tokens_env):
        raise s.fail("allow_anonymous", "true while users or tokens are set: give credentials or allow "
                                        "anonymous uploads, not both")
    if not anonymous and not (users or tokens or users_env or tokens_env):
        raise s.fail("users", "the STOW-RS receiver needs credentials: set dicomweb.users ({name: password}) "
                              "and/or dicomweb.tokens ([token]) (or their *_env forms), or allow_anonymous: true")
    return DicomWebConfig(host, port, base_path, dict(users), tuple(tokens), dict(users_env), tuple(tokens_env),
                          anonymous, *limits, tls, tuple(peers))


def _deliver(s: _Section) -> DeliverConfig:
    def seconds(key: str, default: float) -> float:
        return s.get(key, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                     "must be a number of seconds > 0")

    config = DeliverConfig(seconds("interval_s", 5.0), seconds("retry_base_s", 30.0),
                           s.get("retry_factor", 2.0, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and v >= 1, "must be a number >= 1"),
                           seconds("retry_cap_s", 3600.0))
    if config.retry_cap_s < config.retry_base_s:
        raise ConfigError(f"config: deliver.retry_cap_s: must be >= retry_base_s ({config.retry_base_s}), "
                          f"got {config.retry_cap_s}")
    s.finish()
    return config


def _node(s: _Section, base: Path) -> NodeConfig:
    peers = []
    items = s.get("peers", [], lambda v: isinstance(v, list), "must be a list of {ae_title, address}")
    for i, item in enumerate(items):
        p = _Section(item, f"node.peers[{i}]")
        ae = p.ae("ae_title", None)
        address = p.get("address", None, _is_network, "must be an IP address or network like 10.0.0.0/8")
        if ae is None and address is None:
            raise ConfigError(f"config: node.peers[{i}]: give ae_title, address or both")
        p.finish()
        peers.append(PeerConfig(ae, None if address is None else str(address)))
    raw_tls = s.get("tls", None, lambda v: True, "")
    tls = None if raw_tls is None else _tls(raw_tls, "node.tls", base)
    node = NodeConfig(s.ae("ae_title", "NEUROREAD"), s.str("host", "127.0.0.1"), s.int("port", 11112, 1, 65535),
                      s.bool("require_called_ae", True), s.int("max_associations", 10, 1), tuple(peers), tls)
    s.finish()
    return node


def _is_network(v: object) -> bool:
    try:
        ipaddress.ip_network(str(v), strict=False)
    except ValueError:
        return False
    return isinstance(v, str)


def _models(data: Mapping, base: Path) -> dict[str, ModelConfig]:
    out = {}
    for name, raw in data.items():
        m = _Section(raw, f"models.{name}")
        thresholds = m.get("thresholds", {}, lambda v: isinstance(v, Mapping), "must be a mapping label -> threshold")
        for label, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"config: models.{name}.thresholds.{label}: must be a number in (0, 1), got {_show(value)}")
        out[str(name)] = ModelConfig(m.path_("weights", None, base),
                                     m.get("device", "cpu", lambda v: isinstance(v, str) and bool(_DEVICE.match(v)),
                                           "must be cpu, cuda, cuda:N or mps"),
                                     {str(k): float(v) for k, v in thresholds.items()},
                                     m.bool("enabled", True))
        m.finish()
    return out


def _destinations(data: Mapping, base: Path) -> dict[str, dict]:
    out = {}
    for name, raw in data.items():
        d = _Section(raw, f"destinations.{name}")
        kind = d.choice("type", None, tuple(DESTINATION_TYPES)) if "type" in d.data else None
        if kind is None:
            raise ConfigError(f"config: destinations.{name}: missing key 'type' (one of {', '.join(DESTINATION_TYPES)})")
        for key in DESTINATION_TYPES[kind]:
            if key not in d.data:
                raise ConfigError(f"config: destinations.{name}: a {kind} destination needs {key!r}")
        dest = dict(d.data)
        if kind == "dicom":
            d.str("host", None)
            d.int("port", None, 1, 65535)
            d.ae("called_ae", None)
        elif kind == "folder":
            dest["path"] = str(d.path_("path", None, base))
        else:
            d.get("url", None, lambda v: isinstance(v, str) and bool(_URL.match(v)), "must be an http(s) URL")
            if "ca_file" in d.data:  # relative to this file's folder, like every path here
                dest["ca_file"] = str(d.path_("ca_file", None, base))
        out[str(name)] = dest  # other keys (timeouts, TLS, …) belong to the deliver stage
    return out


def _queue(s: _Section, root: Path) -> QueueConfig:
    def seconds(key: str, default: float) -> float:
        return float(s.get(key, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                           "must be a number of seconds > 0"))

    backend = s.choice("backend", "embedded", QUEUE_BACKENDS)
    broker = s.get("broker", None, lambda v: isinstance(v, str) and bool(_BROKER.match(v)),
                   "must be a Redis URL like redis://127.0.0.1:6379/0 (rediss:// for TLS)")
    if backend == "celery" and broker is None:
        raise s.fail("broker", "the celery backend needs a broker: a Redis URL like redis://127.0.0.1:6379/0")
    database = s.get("database", f"sqlite:///{root / 'state.db'}",
                     lambda v: isinstance(v, str) and "://" in v, "must be an SQLAlchemy URL like sqlite:///state.db")
    queue = QueueConfig(database, backend, broker, s.int("workers", 1, 1), s.int("torch_threads", None, 1),
                        seconds("lease_s", 60.0), s.int("max_attempts", 3, 1), seconds("time_limit_s", 3600.0),
                        seconds("sweep_s", 5.0), seconds("republish_s", 120.0), seconds("retry_s", 30.0))
    if queue.retry_s > 3600:
        raise s.fail("retry_s", f"must be at most 3600 s (the longest wait between attempts), got {queue.retry_s:g}")
    if queue.lease_s < 3:
        raise s.fail("lease_s", f"must be at least 3 s (it is renewed every lease_s/3), got {queue.lease_s:g}")
    s.finish()
    return queue


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _status(s: _Section) -> StatusConfig:
    host, port = s.str("host", "127.0.0.1"), s.int("port", 8088, 0, 65535)
    users, users_env = _basic_users(s)
    s.finish()
    if not _is_loopback(host) and not (users or users_env):
        raise s.fail("users", f"the status page listens on {host}, beyond loopback: it needs a login, "
                              "set status.users ({name: password}) or status.users_env ({name: VARIABLE})")
    return StatusConfig(host, port, dict(users), dict(users_env))
