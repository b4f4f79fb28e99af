"""Domain errors that the gRPC layer turns into status codes; messages are meant for people."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of errors a caller should see, with a message saying what was wrong."""

    code_name = "INTERNAL"


class InvalidArgument(ServiceError):
    """The request itself is wrong (bad address, header injection, missing field)."""

    code_name = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """No such object in the caller's organisation (also used for other organisations' objects)."""

    code_name = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """The object to create exists already."""

    code_name = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    """The object is not in a state that allows this (sending a sent campaign)."""

    code_name = "FAILED_PRECONDITION"


class PermissionDenied(ServiceError):
    """The caller is known but not allowed to do this."""

    code_name = "PERMISSION_DENIED"


class Unauthenticated(ServiceError):
    """The caller could not be identified."""

    code_name = "UNAUTHENTICATED"
