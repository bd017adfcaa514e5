"""Configuration: one TOML file parsed once into frozen typed objects.

Each section has its own module with a ``parse`` function over a :class:`Reader`; unknown
keys, wrong types and bad units are :class:`ConfigError` naming file, key path and what was
expected. Files the config names (certificates, keys) are checked here, so a bad path fails
at ``check-config`` rather than at the first STARTTLS.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mtaserver.config import (
    admin,
    api,
    cluster,
    delivery,
    dkim,
    inbound,
    oauth,
    retention,
    server,
    shaping,
    storage,
    submission,
    tls,
    tracking,
    webhooks,
)
from mtaserver.config.admin import AdminConfig
from mtaserver.config.api import ApiConfig
from mtaserver.config.cluster import ClusterConfig
from mtaserver.config.delivery import DeliveryConfig
from mtaserver.config.dkim import DkimKeyConfig
from mtaserver.config.inbound import InboundConfig
from mtaserver.config.oauth import OAuthConfig
from mtaserver.config.reader import Reader
from mtaserver.config.retention import RetentionConfig
from mtaserver.config.server import ServerConfig
from mtaserver.config.shaping import ShapingConfig
from mtaserver.config.storage import StorageConfig
from mtaserver.config.submission import SubmissionConfig
from mtaserver.config.tls import TlsConfig
from mtaserver.config.tracking import TrackingConfig
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    server: ServerConfig
    tls: TlsConfig
    submission: SubmissionConfig
    inbound: InboundConfig
    delivery: DeliveryConfig
    shaping: ShapingConfig
    dkim: tuple[DkimKeyConfig, ...]
    tracking: TrackingConfig
    admin: AdminConfig
    storage: StorageConfig
    webhooks: tuple[WebhookConfig, ...] = ()
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    cluster: ClusterConfig | None = None  # [cluster]: one of several nodes


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, p)


def parse_config(text: str, path: Path) -> Config:
    name = path.name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    root = Reader(data, name, "", path.parent.resolve())
    srv = server.parse(root.table("server"))
    tls_cfg = tls.parse(root.table("tls"))
    sub = submission.parse(root.table("submission"))
    cfg = Config(
        source=path.resolve(),
        server=srv,
        tls=tls_cfg,
        submission=sub,
        inbound=inbound.parse(root.table("inbound")),
        delivery=delivery.parse(root.table("delivery")),
        shaping=shaping.parse(root.table("shaping")),
        dkim=dkim.parse(root.tables("dkim")),
        tracking=tracking.parse(root.table("tracking"), srv.data_dir / "tracking.key"),
        admin=admin.parse(root.table("admin")),
        storage=storage.parse(root.table("storage"), srv.data_dir),
        webhooks=webhooks.parse(root.tables("webhooks")),
        retention=retention.parse(root.table("retention")),
        api=api.parse(root.table("api")),
        oauth=oauth.parse(root.table("oauth")),
        cluster=cluster.parse(root.table("cluster"), srv.hostname) if root.has("cluster") else None,
    )
    root.finish()
    _cross_check(cfg, root)
    return cfg


def _cross_check(cfg: Config, root: Reader) -> None:
    """Rules that span sections."""
    if cfg.storage.backend == "postgresql":
        storage.check_postgres(root.file, {})  # every component is ported so far
    sub = cfg.submission
    if (sub.listen or sub.listen_tls) and not cfg.tls.enabled:
        key = "listen_tls" if sub.listen_tls else "listen"
        raise ConfigError(
            f"{root.file}: submission.{key}: needs [tls] cert and key (TLS is required there)"
        )
    if sub.listen_plain and not sub.trusted_networks:
        raise ConfigError(
            f"{root.file}: submission.listen_plain: a plaintext listener accepts only "
            "trusted_networks clients, and trusted_networks is empty"
        )
    if cfg.admin.listen and cfg.admin.tls and not cfg.tls.enabled:
        raise ConfigError(f"{root.file}: admin.tls: needs [tls] cert and key")
    if cfg.api.listen and cfg.api.tls and not cfg.tls.enabled:
        raise ConfigError(f"{root.file}: api.tls: needs [tls] cert and key")
    if cfg.tracking.unsubscribe_mailto and not (cfg.inbound.listen and cfg.inbound.bounce_domain):
        raise ConfigError(
            f"{root.file}: tracking.unsubscribe_mailto: mail to it is processed by the inbound "
            "listener, which needs [inbound] listen and bounce_domain"
        )
