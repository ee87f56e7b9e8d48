"""The node's parts, built from its configuration: routes, destinations, the model runner, the
server TLS context; and the routing decision shared by the node and :func:`run_files`."""
from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from pathlib import Path

import pydicom

from neuroread.models import ModelRegistry, ModelSpec
from neuroread.models.weights import WeightsCatalog
from neuroread.node.config import Config, TLSConfig
from neuroread.node.deliver import Destination, destination_from_dict
from neuroread.node.encode import EncodeInfo
from neuroread.node.infer import ModelRunner
from neuroread.node.route import Route, RouteDecision, default_routes, load_routes, match_series

logger = logging.getLogger(__name__)


def build_routes(config: Config, registry: ModelRegistry) -> tuple[Route, ...]:
    """Configured routes first (checked against the registry and destinations), then each
    registry model's default routes (sorted by priority in :func:`match_series`). Models
    switched off (``models: {name: {enabled: false}}``) get no route: their default routes are
    left out and configured routes naming them are dropped with a warning."""
    specs = {name: registry.spec(name) for name in registry.names()}
    disabled = config.disabled_models()
    routes = load_routes(list(config.routes), specs, destinations=list(config.destinations))
    for route in routes:
        if route.model in disabled:
            logger.warning("route %r names model %s, which is switched off (models.%s.enabled: false): not used",
                           route.name, route.model, route.model)
    routes = tuple(r for r in routes if r.model not in disabled)
    for name, spec in specs.items():
        if name not in disabled:
            routes += default_routes(spec)
    return routes


def build_destinations(config: Config) -> list[Destination]:
    """The configured destinations as deliver-stage objects (config keys mapped to theirs)."""
    out = []
    for name, raw in config.destinations.items():
        cfg = {k: v for k, v in raw.items()}
        cfg["name"] = name
        if cfg.get("type") == "dicom":
            if "ae_title" in cfg and "called_ae" not in cfg:  # older configuration key
                cfg["called_ae"] = cfg.pop("ae_title")
            cfg.setdefault("calling_ae", config.node.ae_title)
        elif cfg.get("type") == "folder":
            cfg["path"] = Path(cfg["path"])
        out.append(destination_from_dict(cfg, f"destinations.{name}"))
    return out


def make_catalog(config: Config, registry: ModelRegistry) -> WeightsCatalog:
    """Which weights each model runs with (configured files, else demo weights) and the threshold
    overrides: one catalog per node, shared by its workers' runners."""
    return WeightsCatalog(registry, {n: m.weights for n, m in config.models.items()},
                          {n: m.thresholds for n, m in config.models.items()})


def make_runner(config: Config, registry: ModelRegistry, catalog: WeightsCatalog | None = None) -> ModelRunner:
    """A runner with each configured model's weights, device, threshold overrides and threads."""
    return ModelRunner(registry, device={n: m.device for n, m in config.models.items()},
                       torch_threads=config.queue.torch_threads,
                       catalog=catalog if catalog is not None else make_catalog(config, registry))


def decide(header: pydicom.Dataset, instances: int, routes: Iterable[Route],
           registry: ModelRegistry) -> tuple[RouteDecision, list[Route], list[Route]]:
    """The route decision and its assignments split by kind of model: single-series models
    (a job per series) and multi-series ones (slots filled per study)."""
    decision = match_series(header, instances, routes)
    single = [r for r in decision.assignments if len(registry.spec(r.model).slots) == 1]
    multi = [r for r in decision.assignments if len(registry.spec(r.model).slots) > 1]
    return decision, single, multi


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server-side TLS context (DICOM-TLS or HTTPS) from ``tls``; ``ca`` set: peers must
    present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.ca is not None:
        context.load_verify_locations(tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def encode_info(config: Config) -> EncodeInfo:
    return EncodeInfo(device_name=f"neuroread node {config.node.ae_title}")


def multi_series_specs(registry: ModelRegistry) -> list[ModelSpec]:
    return [registry.spec(n) for n in registry.names() if len(registry.spec(n).slots) > 1]
