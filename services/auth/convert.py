"""Auth's one conversion of its statuses into the protobuf enums (auth.proto), by name."""

from __future__ import annotations

from mailblast.v1 import auth_pb2

from services.auth.security import LoginStatus, SessionStatus


def login_status(status: LoginStatus) -> auth_pb2.LoginStatus.ValueType:
    """LoginStatus.LOCKED is LOGIN_STATUS_LOCKED, and so on."""
    return auth_pb2.LoginStatus.Value(f"LOGIN_STATUS_{LoginStatus(status).name}")


def session_status(status: SessionStatus) -> auth_pb2.SessionStatus.ValueType:
    """SessionStatus.REVOKED is SESSION_STATUS_REVOKED, and so on."""
    return auth_pb2.SessionStatus.Value(f"SESSION_STATUS_{SessionStatus(status).name}")
