"""One settings object for the whole app, read from the environment (``CSH_*``) so the
server, the scheduler, the CLI and the tests agree on where data lives and how it is released."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Runtime settings; every field maps to an environment variable ``CSH_<NAME>``.

    >>> Settings(data_dir=Path("/tmp/csh")).snapshots_dir
    PosixPath('/tmp/csh/snapshots')
    """

    model_config = SettingsConfigDict(env_prefix="CSH_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the working store and snapshots live.")
    port: int = Field(5006, validation_alias="PORT", description="HTTP port of the single server process.")
    host: str = Field("127.0.0.1", description="Interface the server binds to.")
    demo_seed: int = Field(20261121, description="Seed of the simulated demo city.")
    demo_size: int = Field(1_200_000, ge=1_000, description="Target number of demo events.")
    demo_days: int = Field(60, ge=14, description="Days of demo history before the end time.")
    poll_seconds: float = Field(300.0, gt=0, description="Interval of the scheduler's poll-and-publish job.")
    scheduler_enabled: bool = Field(True, description="Start the in-process scheduler with the app.")
    keep_snapshots: int = Field(3, ge=2, description="Snapshots kept on disk; older ones are pruned.")
    privacy_mode: Literal["none", "suppress", "dp"] = Field(
        "suppress",
        description="How counts are released: 'none' (internal), 'suppress' (hide 1..k-1 and complements) or 'dp' "
        "(differentially private noisy counts, budgeted).",
    )
    privacy_k: int = Field(11, ge=1, description="Smallest count published in 'suppress' mode.")
    privacy_epsilon: float = Field(1.0, gt=0, le=10, description="Privacy-loss parameter of one 'dp' release.")
    privacy_budget: float = Field(10.0, gt=0, description="Total epsilon the 'dp' ledger allows per instant of data.")
    grains: str = Field(
        "auto",
        description="Time grain each level is published at: 'auto' (per city, the finest grain whose cells are mostly "
        "publishable) or pairs like 'tract=week,neighborhood=day,borough=hour,city=hour'.",
    )
    sources: str = Field("", description="Comma-separated registry sources the scheduler polls (empty: the demo feed only).")
    http_timeout: float = Field(30.0, gt=0, description="Seconds before a provider request times out (then it is retried).")
    alerts_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the alerts store (default: SQLite in data_dir/alerts.sqlite; "
        "postgresql+psycopg://... where several processes share it).",
    )
    webhook_allow: str = Field(
        "",
        description="Comma-separated host names a self-hoster trusts as webhook targets although they resolve to private "
        "addresses (e.g. an internal receiver); every other target must resolve to public addresses only.",
    )
    public_url: str | None = Field(
        None,
        description="The server's address as its users reach it (e.g. https://heat.example.org), used in the pause and "
        "unsubscribe links of alerts; default http://<host>:<port>.",
    )
    alerts_link_secret: SecretStr | None = Field(
        None,
        description="Secret that signs pause and unsubscribe links (at least 32 characters); default: a random one "
        "made on first start and kept in data_dir/alerts_link.key.",
    )
    smtp_host: str | None = Field(
        None, description="SMTP server that sends alert emails (unset: an email delivery is a dead letter saying so)."
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_from: str | None = Field(None, description="Sender address of alert emails.")
    smtp_username: str | None = Field(None, description="SMTP login, if the server needs one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (never logged).")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "starttls", description="How the SMTP connection is protected: STARTTLS, implicit TLS or none (a local relay)."
    )
    alerts_rate_per_minute: float = Field(
        120.0, gt=0, description="Requests per minute each API key (or, unauthenticated, each client address) may make to the alert API."
    )
    alerts_rate_burst: int = Field(30, ge=1, description="Requests the alert API takes at once before its per-minute rate applies.")
    max_body_bytes: int = Field(
        2_000_000, ge=1, description="Largest request body (bytes) a POST, PUT or PATCH may send; larger ones are a 413."
    )
    alerts_max_rules: int = Field(1000, ge=1, description="Rules one API key may hold.")
    alerts_max_endpoints: int = Field(50, ge=1, description="Delivery endpoints one API key may hold.")
    geo_dir: Path | None = Field(
        None,
        description="Directory holding boundary files (e.g. the Chicago tracts); files missing there are downloaded "
        "once from the City portal and cached under data_dir/geo.",
    )

    @property
    def source_names(self) -> list[str]:
        """``sources`` as a list of registry names."""
        return [s.strip() for s in self.sources.split(",") if s.strip()]

    @property
    def webhook_allow_hosts(self) -> frozenset[str]:
        """:attr:`webhook_allow` as a set of lower-case host names."""
        return frozenset(h.strip().lower().rstrip(".") for h in self.webhook_allow.split(",") if h.strip())

    @property
    def alerts_database_url(self) -> str:
        """The alerts store's URL: ``alerts_url``, else the embedded SQLite file in ``data_dir``."""
        return self.alerts_url or f"sqlite:///{(self.data_dir / 'alerts.sqlite').resolve()}"

    @property
    def base_url(self) -> str:
        """:attr:`public_url`, else the address the server binds to."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def snapshots_dir(self) -> Path:
        """Directory holding the immutable snapshot files."""
        return self.data_dir / "snapshots"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()
