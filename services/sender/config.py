"""The sender's settings: SENDER_* plus DATABASE_URL, NATS_URL and the internal key."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ConfigError, env_bytes_secret, env_float, env_int, env_str
from services.common.rpc import TlsFiles
from services.sender.mime import MessageProblem, check_address

TLS_OPPORTUNISTIC = "opportunistic"
TLS_REQUIRED = "required"


@dataclass(frozen=True)
class Config:
    """Everything the sender needs; build it with from_env() or directly in tests."""

    database_url: str
    nats_url: str
    internal_key: bytes
    return_path_domain: str
    unsubscribe_url: str
    # Mutual TLS for gRPC: this service's certificate, its key and the CA it trusts (MAILBLAST_TLS_*).
    grpc_tls: TlsFiles
    message_id_domain: str = ""
    grpc_bind: str = "0.0.0.0:50054"
    # A plaintext listener answering only grpc.health.v1 (Kubernetes' gRPC probes); empty for none.
    health_bind: str = ""
    relay_host: str = ""
    relay_port: int = 25
    tls: str = TLS_OPPORTUNISTIC
    tls_ca_file: str = ""
    dkim_domain: str = ""
    dkim_selector: str = ""
    dkim_key_file: str = ""
    dkim_ed25519_selector: str = ""
    dkim_ed25519_key_file: str = ""
    concurrency: int = 64
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    give_up_seconds: float = 345600.0
    # How long a batch taken by a sender that vanished (killed) waits before another sender gets it.
    ack_wait_seconds: float = 60.0
    # How long a sender's claim on a recipient lasts: a killed sender's claims lapse after it, and only then
    # may another sender deliver those recipients (the one possible duplicate: mail in flight at the kill).
    claim_seconds: float = 300.0
    # How long one SMTP command may take before the delivery counts as deferred.
    smtp_timeout_seconds: float = 60.0
    # The name given in EHLO; empty means the message-id domain.
    helo_name: str = ""
    # The envelope sender of transactional mail; empty means bounces@<return-path domain>.
    system_return_path: str = ""
    # How long a batch of a paused campaign waits before the sender looks at the campaign again.
    pause_recheck_seconds: float = 30.0
    # The .creds file of this process's NATS credential; empty: connect without (a server without auth).
    nats_creds_file: str = ""

    def __post_init__(self) -> None:
        if self.tls not in (TLS_OPPORTUNISTIC, TLS_REQUIRED):
            raise ConfigError(f"SENDER_TLS={self.tls!r} must be '{TLS_OPPORTUNISTIC}' or '{TLS_REQUIRED}'")
        if self.concurrency < 1:
            raise ConfigError(f"SENDER_CONCURRENCY={self.concurrency} must be at least 1")
        if self.system_return_path:
            try:
                check_address("SENDER_SYSTEM_RETURN_PATH", self.system_return_path)
            except MessageProblem as exc:
                raise ConfigError(str(exc)) from None
        if not self.message_id_domain:
            object.__setattr__(self, "message_id_domain", self.return_path_domain)

    @property
    def batches_in_flight(self) -> int:
        """How many batches one process works on at once: enough to keep every delivery slot busy."""
        return max(2, self.concurrency // 32 + 1)

    @property
    def ehlo_name(self) -> str:
        """The host name announced in EHLO."""
        return self.helo_name or self.message_id_domain

    @classmethod
    def from_env(cls) -> Config:
        """Read the settings from the environment; a missing required one is named."""
        return cls(
            database_url=env_str("DATABASE_URL"),
            nats_url=env_str("NATS_URL"),
            internal_key=env_bytes_secret("MAILBLAST_INTERNAL_KEY"),
            return_path_domain=env_str("SENDER_RETURN_PATH_DOMAIN"),
            unsubscribe_url=env_str("SENDER_UNSUBSCRIBE_URL"),
            message_id_domain=env_str("SENDER_MESSAGE_ID_DOMAIN", ""),
            grpc_bind=env_str("SENDER_GRPC_BIND", "0.0.0.0:50054"),
            grpc_tls=TlsFiles.from_env(),
            health_bind=env_str("MAILBLAST_HEALTH_BIND", ""),
            relay_host=env_str("SENDER_RELAY_HOST", ""),
            relay_port=env_int("SENDER_RELAY_PORT", 25),
            tls=env_str("SENDER_TLS", TLS_OPPORTUNISTIC).strip().lower(),
            tls_ca_file=env_str("SENDER_TLS_CA_FILE", ""),
            dkim_domain=env_str("SENDER_DKIM_DOMAIN", ""),
            dkim_selector=env_str("SENDER_DKIM_SELECTOR", ""),
            dkim_key_file=env_str("SENDER_DKIM_KEY_FILE", ""),
            dkim_ed25519_selector=env_str("SENDER_DKIM_ED25519_SELECTOR", ""),
            dkim_ed25519_key_file=env_str("SENDER_DKIM_ED25519_KEY_FILE", ""),
            concurrency=env_int("SENDER_CONCURRENCY", 64),
            retry_base_seconds=env_float("SENDER_RETRY_BASE_SECONDS", 60.0),
            retry_max_seconds=env_float("SENDER_RETRY_MAX_SECONDS", 3600.0),
            give_up_seconds=env_float("SENDER_GIVE_UP_SECONDS", 345600.0),
            ack_wait_seconds=env_float("SENDER_ACK_WAIT_SECONDS", 60.0),
            claim_seconds=env_float("SENDER_CLAIM_SECONDS", 300.0),
            smtp_timeout_seconds=env_float("SENDER_SMTP_TIMEOUT_SECONDS", 60.0),
            helo_name=env_str("SENDER_HELO_NAME", ""),
            system_return_path=env_str("SENDER_SYSTEM_RETURN_PATH", ""),
            pause_recheck_seconds=env_float("SENDER_PAUSE_RECHECK_SECONDS", 30.0),
            nats_creds_file=env_str("NATS_CREDS_FILE", ""),
        )
