"""Exceptions -> gRPC status codes, in one table, with field violations as rich details.

A failed call never ends as UNKNOWN: each exception is matched against ``STATUS_TABLE`` (the
first ``isinstance`` match wins) and the call is aborted with the code, a readable message
and, for validation errors, a ``google.rpc.BadRequest`` listing every field violation. Anything
not in the table is INTERNAL with a generic message; the traceback goes to the server log (and
to the client only with ``rungrpcserver --dev``).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from django.core import exceptions as django_exceptions
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from rest_framework import exceptions as drf

from django_grpc_bus.conversion.messages import ConversionError

logger = logging.getLogger("django_grpc_bus")

Code = grpc.StatusCode
# A status travels in trailers twice: the message percent-encoded in grpc-message, and the whole
# google.rpc.Status base64-encoded in grpc-status-details-bin. Clients refuse trailers past
# 8 KiB, so texts that echo a client's value are cut to fit these budgets (in encoded bytes).
MAX_DEV_TRACEBACK = 1500
MESSAGE_BUDGET = 1800  # grpc-message, percent-encoded
DETAILS_BUDGET = 2400  # the serialized Status (base64 adds a third)
MAX_VIOLATION = 200  # characters of one field path or description


def _encoded_cost(char: str) -> int:
    """Bytes `char` takes in grpc-message (printable ASCII as is, the rest as %XX per byte)."""
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode())


def _clip(text: str, budget: int) -> str:
    """`text` cut (with an ellipsis) so that its percent-encoded form fits `budget` bytes."""
    used = 0
    for index, char in enumerate(text):
        used += _encoded_cost(char)
        if used > budget - 9:  # room for the ellipsis, itself encoded
            return text[:index] + "…"
    return text


class GrpcError(Exception):
    """Raise from a service to end the call with this status, message and field violations."""

    def __init__(
        self, code: grpc.StatusCode, message: str, violations: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = violations or []


@dataclass(frozen=True)
class Failure:
    """What a call ends with: status code, message, and (field, description) violations."""

    code: grpc.StatusCode
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)


# -- helpers for the table -----------------------------------------------------------------------


def flatten_errors(detail: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """DRF error details as (field path, message, code): ``items[0].name`` for nested lists."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # a ListSerializer's errors, by the index of the item
                yield from flatten_errors(value, f"{prefix}[{key}]")
                continue
            name = "" if key == "non_field_errors" else str(key)
            yield from flatten_errors(
                value, f"{prefix}.{name}" if prefix and name else prefix or name
            )
    elif isinstance(detail, (list, tuple)):
        if all(not isinstance(item, (dict, list, tuple)) for item in detail):
            for item in detail:
                yield prefix, str(item), str(getattr(item, "code", "invalid"))
        else:
            for index, item in enumerate(detail):
                yield from flatten_errors(item, f"{prefix}[{index}]")
    else:
        yield prefix, str(detail), str(getattr(detail, "code", "invalid"))


def _validation(detail: Any) -> Failure:
    return _violations_failure(list(flatten_errors(detail)))


def _violations_failure(errors: list[tuple[str, str, str]]) -> Failure:
    """INVALID_ARGUMENT for (path, message, code) errors; ALREADY_EXISTS when all are unique."""
    violations = [(path, message) for path, message, _code in errors]
    readable = "; ".join(f"{path}: {message}" if path else message for path, message in violations)
    if errors and all(code == "unique" for _path, _message, code in errors):
        return Failure(Code.ALREADY_EXISTS, readable or "Already exists.", violations)
    return Failure(Code.INVALID_ARGUMENT, readable or "Invalid request.", violations)


def _django_validation(exc: django_exceptions.ValidationError) -> Failure:
    """Django's errors keep their codes, so a model's unique check is ALREADY_EXISTS too."""
    if hasattr(exc, "error_dict"):
        groups = [
            ("" if field == django_exceptions.NON_FIELD_ERRORS else field, errors)
            for field, errors in exc.error_dict.items()
        ]
    else:
        groups = [("", exc.error_list)]
    errors = [
        (path, message, str(error.code or "invalid"))
        for path, group in groups
        for error in group
        for message in error.messages
    ]
    return _violations_failure(errors)


def _is_unique_violation(exc: IntegrityError) -> bool:
    """By the driver's error code where it gives one; by SQLite's fixed wording otherwise."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate:  # PostgreSQL
        return sqlstate == "23505"
    args = getattr(cause, "args", ())
    if args and isinstance(args[0], int):  # MySQL / MariaDB error numbers
        return args[0] in (1062, 1586)
    return str(exc).startswith("UNIQUE constraint failed")


def _integrity(exc: IntegrityError) -> Failure:
    if _is_unique_violation(exc):
        return Failure(Code.ALREADY_EXISTS, "A row with these unique values already exists.")
    return Failure(
        Code.FAILED_PRECONDITION,
        "The change breaks a database constraint (a related row missing, or a check failing).",
    )


# DRF's HTTP-flavoured exceptions, by status code (the usual HTTP -> gRPC mapping).
HTTP_CODES = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    406: Code.INVALID_ARGUMENT,
    409: Code.ALREADY_EXISTS,
    412: Code.FAILED_PRECONDITION,
    415: Code.INVALID_ARGUMENT,
    429: Code.RESOURCE_EXHAUSTED,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}


def _api_exception(exc: drf.APIException) -> Failure | None:
    code = HTTP_CODES.get(exc.status_code)
    return Failure(code, str(exc.detail)) if code is not None else None  # None: unexpected


def _fixed(code: grpc.StatusCode, message: str) -> Callable[[BaseException], Failure]:
    return lambda exc: Failure(code, message)


def _own_message(code: grpc.StatusCode) -> Callable[[BaseException], Failure]:
    return lambda exc: Failure(code, str(exc) or code.name)


# SQLite's limits on one statement (https://sqlite.org/limits.html): a request that makes a
# query past them (a long `contains` text, a search of many terms) no retry will mend.
SQLITE_STATEMENT_LIMITS = (
    "LIKE or GLOB pattern too complex",
    "Expression tree is too large",
    "too many SQL variables",
    "string or blob too big",
)


# A table that does not exist, in each database's words: SQLite's OperationalError, PostgreSQL's
# undefined_table (SQLSTATE 42P01) and MySQL's error 1146, both ProgrammingError.
MISSING_TABLE = re.compile(
    r"no such table: (?P<sqlite>\S+)"
    r"|relation \"(?P<postgresql>[^\"]+)\" does not exist"
    r"|Table '(?:[^'.]+\.)?(?P<mysql>[^']+)' doesn't exist"
)


def missing_table(exc: BaseException) -> str | None:
    """The table `exc` says does not exist (its migrations were not applied), or None."""
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    args = getattr(cause, "args", ())
    if sqlstate and sqlstate != "42P01":
        return None
    if args and isinstance(args[0], int) and args[0] != 1146:
        return None
    found = MISSING_TABLE.search(str(exc))
    return next((name for name in found.groups() if name), None) if found else None


def _missing_table(exc: DatabaseError) -> Failure | None:
    """FAILED_PRECONDITION, not UNAVAILABLE: retrying cannot create a table, `migrate` does."""
    table = missing_table(exc)
    if table is None:
        return None
    return Failure(
        Code.FAILED_PRECONDITION,
        f"The server's database has no table {table}: run `manage.py migrate` on the server.",
    )


def _operational(exc: OperationalError) -> Failure:
    if any(limit in str(exc) for limit in SQLITE_STATEMENT_LIMITS):
        return Failure(Code.INVALID_ARGUMENT, "The request makes a query too large to run.")
    missing = _missing_table(exc)
    if missing is not None:
        return missing
    return Failure(Code.UNAVAILABLE, "The database is unavailable; retry later.")


# The table. Order matters: the first class the exception is an instance of decides.
# A converter may say None: the exception is unexpected after all (-> INTERNAL).
STATUS_TABLE: list[tuple[type[BaseException], Callable[[Any], Failure | None]]] = [
    (GrpcError, lambda exc: Failure(exc.code, exc.message, exc.violations)),
    (drf.ValidationError, lambda exc: _validation(exc.detail)),
    (django_exceptions.ValidationError, _django_validation),
    (
        ConversionError,
        lambda exc: Failure(Code.INVALID_ARGUMENT, str(exc), [(exc.path, exc.problem)]),
    ),
    (django_exceptions.ObjectDoesNotExist, _own_message(Code.NOT_FOUND)),
    (Http404, _own_message(Code.NOT_FOUND)),
    (django_exceptions.PermissionDenied, _own_message(Code.PERMISSION_DENIED)),
    (drf.APIException, _api_exception),
    (ProtectedError, _fixed(Code.FAILED_PRECONDITION, "Other rows still refer to this one.")),
    (RestrictedError, _fixed(Code.FAILED_PRECONDITION, "Other rows still refer to this one.")),
    (IntegrityError, _integrity),
    (DataError, _fixed(Code.INVALID_ARGUMENT, "A value does not fit its database column.")),
    # e.g. SQLite's 64-bit integers, which hold a duration in microseconds
    (OverflowError, _fixed(Code.INVALID_ARGUMENT, "A value is too large to store.")),
    (OperationalError, _operational),
    (ProgrammingError, _missing_table),  # anything else in it is unexpected (-> INTERNAL)
    (InterfaceError, _fixed(Code.UNAVAILABLE, "The database is unavailable; retry later.")),
    (django_exceptions.MultipleObjectsReturned, _own_message(Code.FAILED_PRECONDITION)),
    (NotImplementedError, _fixed(Code.UNIMPLEMENTED, "This method is not implemented.")),
]

INTERNAL = Failure(Code.INTERNAL, "Internal server error.")
DATABASE_ERRORS = (IntegrityError, DataError, OperationalError, InterfaceError, ProgrammingError)


def failure_for(exc: BaseException) -> Failure | None:
    """The table's failure for `exc`, or None when it is unexpected (-> INTERNAL)."""
    for exc_class, convert in STATUS_TABLE:
        if isinstance(exc, exc_class):
            return convert(exc)  # may itself say None: unexpected after all
    return None


def status_for(failure: Failure) -> grpc.Status:
    """A ``grpc.Status`` carrying the google.rpc.Status (with BadRequest) in its trailers.

    Long texts are clipped, and violations beyond ``DETAILS_BUDGET`` are left out with a note
    saying how many, so the trailers always fit what clients accept.
    """
    message = _clip(failure.message, MESSAGE_BUDGET)
    status = status_pb2.Status(code=getattr(code_pb2, failure.code.name), message=message)
    if failure.violations:
        bad_request = error_details_pb2.BadRequest()
        room = DETAILS_BUDGET - status.ByteSize() - 64  # the Any's type URL and framing
        for shown, (path, text) in enumerate(failure.violations):
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=path[:MAX_VIOLATION], description=text[:MAX_VIOLATION]
            )
            room -= violation.ByteSize() + 3
            if room < 48:  # keep room for the note that some were left out
                left = len(failure.violations) - shown
                bad_request.field_violations.add(description=f"{left} more not shown")
                break
            bad_request.field_violations.append(violation)
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        status.details.append(packed)
    return rpc_status.to_status(status)


def describe_failure(exc: BaseException, method: str, dev: bool) -> Failure:
    """The failure `exc` ends a call with; unexpected errors are logged and become INTERNAL."""
    failure = failure_for(exc)
    if failure is None or failure.code is Code.INTERNAL:
        logger.error("Unhandled error in %s", method, exc_info=exc)
        if not dev:
            return INTERNAL
        text = "".join(traceback.format_exception(exc))[-MAX_DEV_TRACEBACK:]
        return Failure(Code.INTERNAL, f"{INTERNAL.message}\n{text}")
    if isinstance(exc, DATABASE_ERRORS):
        # The client gets a generic text; the operator needs the database's own words (which
        # constraint, which column) to find the cause.
        if missing_table(exc) is not None:  # every such call fails until someone migrates
            logger.error("%s ended %s: %s (%s)", method, failure.code.name, failure.message, exc)
        else:
            logger.warning(
                "%s ended %s: %s: %s", method, failure.code.name, type(exc).__name__, exc
            )
        if dev:
            return Failure(failure.code, f"{failure.message} ({exc})", failure.violations)
    return failure


def abort_with(context: grpc.ServicerContext, failure: Failure) -> None:
    """End the call with `failure` (raises, as ``context.abort`` does)."""
    context.abort_with_status(status_for(failure))
