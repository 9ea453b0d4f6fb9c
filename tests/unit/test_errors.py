"""django_grpc_bus.errors: every exception a call can end with becomes a documented status."""

from __future__ import annotations

import logging
import uuid

import grpc
import pytest
from django.core import exceptions as django_exceptions
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    connection,
    transaction,
)
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from google.rpc import code_pb2, error_details_pb2, status_pb2
from rest_framework import exceptions as drf

from django_grpc_bus import errors
from django_grpc_bus.conversion.messages import ConversionError
from django_grpc_bus.errors import (
    INTERNAL,
    MAX_DEV_TRACEBACK,
    STATUS_TABLE,
    Failure,
    GrpcError,
    describe_failure,
    failure_for,
    flatten_errors,
    status_for,
)

Code = grpc.StatusCode
# Fragments of the SQLite and PostgreSQL texts of unique and NOT NULL violations.
SQL_WORDS = (
    "catalog_tag",
    "constraint failed",
    "duplicate key",
    "null value in column",
    "DETAIL",
    "Key (name)",
    "same",
)


def decode_status(status: grpc.Status) -> status_pb2.Status:
    metadata = dict(status.trailing_metadata)
    assert set(metadata) == {"grpc-status-details-bin"}
    return status_pb2.Status.FromString(metadata["grpc-status-details-bin"])


def bad_request_of(rpc_status: status_pb2.Status) -> list[tuple[str, str]]:
    found = []
    for detail in rpc_status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found


# -- one case per row of STATUS_TABLE -------------------------------------------------------------

TABLE_CASES = [
    (GrpcError(Code.ABORTED, "try again", [("x", "bad")]), GrpcError, Code.ABORTED),
    (drf.ValidationError({"name": ["bad"]}), drf.ValidationError, Code.INVALID_ARGUMENT),
    (
        django_exceptions.ValidationError("bad"),
        django_exceptions.ValidationError,
        Code.INVALID_ARGUMENT,
    ),
    (ConversionError("data.title", "expected a string"), ConversionError, Code.INVALID_ARGUMENT),
    (
        django_exceptions.ObjectDoesNotExist("No row."),
        django_exceptions.ObjectDoesNotExist,
        Code.NOT_FOUND,
    ),
    (Http404("No page."), Http404, Code.NOT_FOUND),
    (
        django_exceptions.PermissionDenied("No."),
        django_exceptions.PermissionDenied,
        Code.PERMISSION_DENIED,
    ),
    (drf.NotFound(), drf.APIException, Code.NOT_FOUND),
    (ProtectedError("protected", set()), ProtectedError, Code.FAILED_PRECONDITION),
    (RestrictedError("restricted", set()), RestrictedError, Code.FAILED_PRECONDITION),
    (IntegrityError("CHECK constraint failed: price"), IntegrityError, Code.FAILED_PRECONDITION),
    (DataError("value too long for type character varying(5)"), DataError, Code.INVALID_ARGUMENT),
    (OverflowError("Python int too large"), OverflowError, Code.INVALID_ARGUMENT),
    (OperationalError("could not connect to server"), OperationalError, Code.UNAVAILABLE),
    (OperationalError("LIKE or GLOB pattern too complex"), OperationalError, Code.INVALID_ARGUMENT),
    (InterfaceError("connection already closed"), InterfaceError, Code.UNAVAILABLE),
    (
        ProgrammingError('relation "django_grpc_bus_watchevent" does not exist'),
        ProgrammingError,
        Code.FAILED_PRECONDITION,
    ),
    (
        django_exceptions.MultipleObjectsReturned("Two rows."),
        django_exceptions.MultipleObjectsReturned,
        Code.FAILED_PRECONDITION,
    ),
    (NotImplementedError(), NotImplementedError, Code.UNIMPLEMENTED),
]


@pytest.mark.parametrize(
    ("exc", "row", "code"), TABLE_CASES, ids=[row.__name__ for _exc, row, _code in TABLE_CASES]
)
def test_each_table_row_gives_its_code(exc, row, code):
    matching = [exc_class for exc_class, _convert in STATUS_TABLE if isinstance(exc, exc_class)]
    assert matching[0] is row  # the case exercises the row it is meant for
    failure = failure_for(exc)
    assert isinstance(failure, Failure)
    assert failure.code is code
    assert failure.message


def test_the_cases_cover_every_row_of_the_table():
    assert {row for _exc, row, _code in TABLE_CASES} == {
        exc_class for exc_class, _convert in STATUS_TABLE
    }


# -- DRF validation errors -----------------------------------------------------------------------


def test_drf_validation_error_dict_lists_every_field():
    failure = failure_for(
        drf.ValidationError({"title": ["Too long.", "Bad."], "isbn": ["Required."]})
    )
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.violations == [("title", "Too long."), ("title", "Bad."), ("isbn", "Required.")]
    for text in ("title: Too long.", "title: Bad.", "isbn: Required."):
        assert text in failure.message


def test_drf_validation_error_list_and_string_have_an_empty_path():
    failure = failure_for(drf.ValidationError(["First.", "Second."]))
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.violations == [("", "First."), ("", "Second.")]
    assert failure_for(drf.ValidationError("Only.")).violations == [("", "Only.")]


def test_non_field_errors_have_an_empty_path():
    failure = failure_for(
        drf.ValidationError({"non_field_errors": ["Dates overlap."], "title": ["Bad."]})
    )
    assert ("", "Dates overlap.") in failure.violations
    assert ("title", "Bad.") in failure.violations
    assert "Dates overlap." in failure.message


def test_nested_dict_errors_are_dotted_paths():
    failure = failure_for(
        drf.ValidationError({"data": {"title": ["Bad."], "non_field_errors": ["Whole."]}})
    )
    assert failure.violations == [("data.title", "Bad."), ("data", "Whole.")]


def test_nested_list_of_dicts_gives_indexed_paths():
    detail = {"items": [{}, {"name": ["Required."], "tags": [{}, {"slug": ["Bad slug."]}]}]}
    failure = failure_for(drf.ValidationError(detail))
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.violations == [
        ("items[1].name", "Required."),
        ("items[1].tags[1].slug", "Bad slug."),
    ]
    assert "items[1].name: Required." in failure.message


def test_flatten_errors_keeps_codes():
    detail = drf.ValidationError({"name": ["Taken."]}, code="unique").detail
    assert list(flatten_errors(detail)) == [("name", "Taken.", "unique")]
    assert list(flatten_errors({"a": ["plain"]})) == [("a", "plain", "invalid")]


def test_all_unique_codes_are_already_exists():
    exc = drf.ValidationError({"name": ["Taken."], "isbn": ["Taken too."]}, code="unique")
    failure = failure_for(exc)
    assert failure.code is Code.ALREADY_EXISTS
    assert failure.violations == [("name", "Taken."), ("isbn", "Taken too.")]


def test_mixed_unique_and_other_codes_are_invalid_argument():
    detail = {
        "name": [drf.ErrorDetail("Taken.", code="unique")],
        "isbn": [drf.ErrorDetail("Required.", code="required")],
    }
    failure = failure_for(drf.ValidationError(detail))
    assert failure.code is Code.INVALID_ARGUMENT
    assert len(failure.violations) == 2


def test_empty_validation_error_still_has_a_message():
    failure = failure_for(drf.ValidationError({}))
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.message
    assert failure.violations == []


@pytest.mark.django_db
def test_a_serializers_unique_error_is_already_exists(compiled):
    from catalog.models import Tag
    from catalog.serializers import TagSerializer

    Tag.objects.create(name="taken")
    serializer = TagSerializer(data={"name": "taken"})
    with pytest.raises(drf.ValidationError) as info:
        serializer.is_valid(raise_exception=True)
    failure = failure_for(info.value)
    assert failure.code is Code.ALREADY_EXISTS
    assert [path for path, _text in failure.violations] == ["name"]


@pytest.mark.django_db
def test_a_serializers_required_error_is_invalid_argument(compiled):
    from catalog.serializers import BookSerializer

    serializer = BookSerializer(data={})
    with pytest.raises(drf.ValidationError) as info:
        serializer.is_valid(raise_exception=True)
    failure = failure_for(info.value)
    assert failure.code is Code.INVALID_ARGUMENT
    assert {path for path, _text in failure.violations} == {"title", "author", "isbn"}


# -- Django validation errors --------------------------------------------------------------------


def test_django_validation_error_with_a_dict():
    exc = django_exceptions.ValidationError(
        {"title": ["Too long."], "isbn": django_exceptions.ValidationError("Bad.")}
    )
    failure = failure_for(exc)
    assert failure.code is Code.INVALID_ARGUMENT
    assert sorted(failure.violations) == [("isbn", "Bad."), ("title", "Too long.")]


def test_django_validation_error_without_a_dict():
    failure = failure_for(django_exceptions.ValidationError("Not allowed."))
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.violations == [("", "Not allowed.")]
    assert failure.message == "Not allowed."
    failure = failure_for(django_exceptions.ValidationError(["One.", "Two."]))
    assert failure.violations == [("", "One."), ("", "Two.")]


def test_django_validation_error_params_are_interpolated():
    exc = django_exceptions.ValidationError("%(value)s is bad.", params={"value": "x"})
    assert failure_for(exc).violations == [("", "x is bad.")]


@pytest.mark.django_db
def test_django_unique_validation_error_is_already_exists():
    from catalog.models import Tag

    Tag.objects.create(name="taken")
    with pytest.raises(django_exceptions.ValidationError) as info:
        Tag(name="taken").full_clean()
    assert failure_for(info.value).code is Code.ALREADY_EXISTS


# -- not found, authentication, permission, throttling ------------------------------------------


@pytest.mark.django_db
def test_model_does_not_exist_is_not_found():
    from catalog.models import Tag

    with pytest.raises(Tag.DoesNotExist) as info:
        Tag.objects.get(name="missing")
    failure = failure_for(info.value)
    assert failure.code is Code.NOT_FOUND
    assert "Tag matching query does not exist" in failure.message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (django_exceptions.ObjectDoesNotExist(), Code.NOT_FOUND),
        (Http404(), Code.NOT_FOUND),
        (Http404("No such book."), Code.NOT_FOUND),
        (drf.NotFound(), Code.NOT_FOUND),
        (drf.NotFound("No such book."), Code.NOT_FOUND),
        (drf.NotAuthenticated(), Code.UNAUTHENTICATED),
        (drf.AuthenticationFailed("Bad token."), Code.UNAUTHENTICATED),
        (drf.PermissionDenied(), Code.PERMISSION_DENIED),
        (django_exceptions.PermissionDenied(), Code.PERMISSION_DENIED),
        (django_exceptions.PermissionDenied("Staff only."), Code.PERMISSION_DENIED),
        (drf.Throttled(wait=5), Code.RESOURCE_EXHAUSTED),
        (drf.Throttled(), Code.RESOURCE_EXHAUSTED),
        (drf.MethodNotAllowed("POST"), Code.UNIMPLEMENTED),
        (drf.ParseError(), Code.INVALID_ARGUMENT),
        (drf.UnsupportedMediaType("text/plain"), Code.INVALID_ARGUMENT),
        (drf.NotAcceptable(), Code.INVALID_ARGUMENT),
    ],
    ids=lambda v: (
        type(v).__module__.split(".")[0] + "." + type(v).__name__
        if isinstance(v, BaseException)
        else v.name
    ),
)
def test_http_flavoured_exceptions(exc, code):
    failure = failure_for(exc)
    assert failure.code is code
    assert failure.message  # never empty, even without a message of its own
    assert failure.violations == []


def test_own_messages_are_kept():
    assert failure_for(Http404("No such book.")).message == "No such book."
    assert failure_for(drf.NotFound("No such book.")).message == "No such book."
    assert failure_for(drf.AuthenticationFailed("Bad token.")).message == "Bad token."
    assert failure_for(django_exceptions.PermissionDenied("Staff only.")).message == "Staff only."
    assert "5 seconds" in failure_for(drf.Throttled(wait=5)).message
    assert "POST" in failure_for(drf.MethodNotAllowed("POST")).message


def test_an_api_exception_with_a_5xx_status_is_internal_without_its_text(caplog):
    class Boom(drf.APIException):
        status_code = 500
        default_detail = "secret internals"

    failure = describe_failure(Boom(), "/x.Y/Z", dev=False)
    assert failure.code is Code.INTERNAL
    assert "secret" not in failure.message
    assert "Unhandled error in /x.Y/Z" in caplog.text  # logged server-side, as SPEC §6 says


def test_an_api_exception_with_an_unlisted_status_is_internal():
    class Teapot(drf.APIException):
        status_code = 418

    assert describe_failure(Teapot(), "/x.Y/Z", dev=False).code is Code.INTERNAL


def test_a_custom_api_exception_with_409_is_already_exists():
    class Conflict(drf.APIException):
        status_code = 409
        default_detail = "Conflict."

    failure = failure_for(Conflict())
    assert failure.code is Code.ALREADY_EXISTS
    assert failure.message == "Conflict."


# -- database errors -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_real_protected_error_is_failed_precondition():
    import datetime as dt
    from decimal import Decimal

    from catalog.models import Author, Everything

    author = Author.objects.create(name="A")
    Everything.objects.create(
        f_int=1, f_bigint=1, f_smallint=1, f_posint=1, f_possmall=1, f_posbig=1, f_float=1.0,
        f_decimal=Decimal("1"), f_bool=True, f_char="c", f_text="t", f_slug="s",
        f_email="a@example.com", f_url="https://example.com", f_uuid=uuid.UUID(int=1),
        f_ip="127.0.0.1", f_filepath="/tmp/x", f_file="files/x", f_image="images/x",
        f_date=dt.date(2020, 1, 1), f_datetime=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
        f_time=dt.time(1, 2), f_duration=dt.timedelta(1), f_binary=b"", f_json={},
        f_choice_int=1, f_choice_str="a", f_custom="x", author=author,
    )  # fmt: skip
    with pytest.raises(ProtectedError) as info, transaction.atomic():
        author.delete()
    assert isinstance(info.value, IntegrityError)  # so its row must come before IntegrityError's
    failure = failure_for(info.value)
    assert failure.code is Code.FAILED_PRECONDITION
    assert "Cannot delete" not in failure.message  # Django's text names models and fields
    assert Author.objects.filter(pk=author.pk).exists()


def _unique_integrity_error():
    from catalog.models import Tag

    Tag.objects.create(name="same")
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        Tag.objects.create(name="same")
    return info.value


def _not_null_integrity_error():
    from catalog.models import Tag

    with pytest.raises(IntegrityError) as info, transaction.atomic():
        Tag.objects.create(name=None)
    return info.value


@pytest.mark.django_db
def test_a_real_unique_violation_is_already_exists():
    failure = failure_for(_unique_integrity_error())
    assert failure.code is Code.ALREADY_EXISTS
    assert failure.violations == []


@pytest.mark.django_db
def test_a_real_not_null_violation_is_failed_precondition():
    failure = failure_for(_not_null_integrity_error())
    assert failure.code is Code.FAILED_PRECONDITION


@pytest.mark.django_db
@pytest.mark.parametrize("make", [_unique_integrity_error, _not_null_integrity_error])
def test_database_error_messages_carry_no_sql_text_outside_dev(make):
    exc = make()
    for dev_off in (failure_for(exc), describe_failure(exc, "/catalog.Tag/Create", dev=False)):
        for word in SQL_WORDS:
            assert word not in dev_off.message, word
    dev = describe_failure(exc, "/catalog.Tag/Create", dev=True)
    assert dev.code is failure_for(exc).code
    assert str(exc) in dev.message
    assert "catalog_tag" in dev.message


@pytest.mark.parametrize(
    "exc",
    [
        DataError('value too long for type character varying(5) in "SELECT * FROM catalog_tag"'),
        OperationalError('FATAL: database "catalog_tag" does not exist; SELECT 1'),
        InterfaceError("connection to catalog_tag already closed during SELECT"),
        IntegrityError('insert or update on table "catalog_tag" violates foreign key constraint'),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_synthetic_database_errors_hide_their_text_outside_dev(exc):
    failure = describe_failure(exc, "/catalog.Tag/Create", dev=False)
    assert "catalog_tag" not in failure.message
    assert "SELECT" not in failure.message
    assert "catalog_tag" in describe_failure(exc, "/catalog.Tag/Create", dev=True).message


@pytest.mark.django_db
@pytest.mark.parametrize("make", [_unique_integrity_error, _not_null_integrity_error])
def test_database_errors_log_the_databases_own_message_at_warning(make, caplog):
    """The client's text is generic, so the operator must find the cause in the log."""
    exc = make()
    with caplog.at_level(logging.WARNING, logger="django_grpc_bus"):
        failure = describe_failure(exc, "/catalog.Tag/Create", dev=False)
    (record,) = [r for r in caplog.records if r.name == "django_grpc_bus"]
    assert record.levelno == logging.WARNING
    assert "/catalog.Tag/Create" in record.getMessage()
    assert failure.code.name in record.getMessage()
    assert str(exc) in record.getMessage()  # e.g. "NOT NULL constraint failed: catalog_tag.name"


def test_an_unavailable_database_is_logged_at_warning_with_its_text(caplog):
    exc = OperationalError("database is locked")
    with caplog.at_level(logging.WARNING, logger="django_grpc_bus"):
        describe_failure(exc, "/catalog.Tag/Create", dev=False)
    assert "UNAVAILABLE: OperationalError: database is locked" in caplog.text


@pytest.mark.django_db
def test_not_null_on_a_column_named_duplicate_is_not_already_exists():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE grpcbus_probe (duplicate_of integer NOT NULL)")
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO grpcbus_probe (duplicate_of) VALUES (NULL)")
    assert failure_for(info.value).code is Code.FAILED_PRECONDITION


def test_an_unmatched_database_error_is_unexpected():
    assert failure_for(DatabaseError("something else")) is None
    assert failure_for(ProgrammingError('syntax error at or near "SELEC"')) is None


class MySQLError(Exception):
    """What mysqlclient raises: the error number first."""


def mysql(exc: Exception, number: int) -> Exception:
    exc.__cause__ = MySQLError(number, str(exc))
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("no such table: django_grpc_bus_watchevent"),  # SQLite
        ProgrammingError(
            'relation "django_grpc_bus_watchevent" does not exist\nLINE 1: INSERT INTO ...'
        ),  # PostgreSQL
        mysql(
            ProgrammingError("(1146, \"Table 'shop.django_grpc_bus_watchevent' doesn't exist\")"),
            1146,
        ),
    ],
    ids=["sqlite", "postgresql", "mysql"],
)
def test_a_missing_table_is_failed_precondition_naming_it_and_migrate(exc, caplog):
    """Not UNAVAILABLE: a client would retry for ever what only `migrate` mends."""
    with caplog.at_level(logging.WARNING, logger="django_grpc_bus"):
        failure = describe_failure(exc, "/catalog.Book/Create", dev=False)
    assert failure.code is Code.FAILED_PRECONDITION
    assert failure.message == (
        "The server's database has no table django_grpc_bus_watchevent: run `manage.py migrate` "
        "on the server."
    )
    (record,) = [r for r in caplog.records if r.name == "django_grpc_bus"]
    assert record.levelno == logging.ERROR
    assert "/catalog.Book/Create" in record.getMessage()
    assert "run `manage.py migrate`" in record.getMessage()


def test_another_mysql_error_naming_a_table_is_not_a_missing_table():
    exc = mysql(ProgrammingError("(1142, \"SELECT command denied for table 'x'\")"), 1142)
    assert failure_for(exc) is None


@pytest.mark.django_db
def test_a_real_missing_table_is_failed_precondition():
    """This database's own words (SQLite, or PostgreSQL with DATABASE_URL)."""
    with pytest.raises(DatabaseError) as info, transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM grpcbus_no_such_table")
    failure = failure_for(info.value)
    assert failure is not None and failure.code is Code.FAILED_PRECONDITION, info.value
    assert "no table grpcbus_no_such_table: run `manage.py migrate`" in failure.message


# -- GrpcError -----------------------------------------------------------------------------------


def test_grpc_error_carries_its_own_code_message_and_violations():
    exc = GrpcError(Code.FAILED_PRECONDITION, "Not yet.", [("state", "Must be open."), ("", "x")])
    assert str(exc) == "Not yet."
    failure = failure_for(exc)
    assert failure == Failure(
        Code.FAILED_PRECONDITION, "Not yet.", [("state", "Must be open."), ("", "x")]
    )
    assert failure_for(GrpcError(Code.NOT_FOUND, "Gone.")).violations == []


def test_conversion_error_is_invalid_argument_with_its_path():
    failure = failure_for(ConversionError("data.title", "expected a string, got int"))
    assert failure.code is Code.INVALID_ARGUMENT
    assert failure.violations == [("data.title", "expected a string, got int")]
    assert "data.title" in failure.message


# -- unexpected errors ---------------------------------------------------------------------------


def test_an_unexpected_error_is_internal_without_its_text(caplog):
    exc = RuntimeError("secret: password=hunter2")
    assert failure_for(exc) is None
    with caplog.at_level(logging.ERROR, logger="django_grpc_bus"):
        failure = describe_failure(exc, "/catalog.Tag/Create", dev=False)
    assert failure.code is Code.INTERNAL
    assert failure.message == "Internal server error."
    assert failure == INTERNAL
    assert "hunter2" not in failure.message
    assert failure.violations == []
    records = [r for r in caplog.records if r.name == "django_grpc_bus"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert "/catalog.Tag/Create" in records[0].getMessage()
    assert records[0].exc_info[1] is exc


def test_an_unexpected_error_in_dev_shows_the_traceback(caplog):
    def fail():
        raise RuntimeError("boom in dev")

    try:
        fail()
    except RuntimeError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger="django_grpc_bus"):
        failure = describe_failure(error, "/catalog.Tag/Create", dev=True)
    assert failure.code is Code.INTERNAL
    assert failure.message.startswith("Internal server error.\n")
    assert "Traceback" in failure.message
    assert "in fail" in failure.message
    assert failure.message.rstrip().endswith("RuntimeError: boom in dev")
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records)


def test_a_dev_traceback_is_cut_to_its_last_max_dev_traceback_characters():
    exc = RuntimeError("x" * (MAX_DEV_TRACEBACK * 3) + " the end")
    failure = describe_failure(exc, "/a.B/C", dev=True)
    prefix = INTERNAL.message + "\n"
    assert failure.message.startswith(prefix)
    traceback_text = failure.message[len(prefix) :]
    assert len(traceback_text) <= MAX_DEV_TRACEBACK
    assert traceback_text.rstrip().endswith("the end")


def test_expected_errors_are_not_described_as_internal():
    failure = describe_failure(Http404("No."), "/a.B/C", dev=True)
    assert failure.code is Code.NOT_FOUND
    assert failure.message == "No."


@pytest.mark.parametrize("exc", [KeyError("k"), ValueError("v"), TypeError("t"), AssertionError()])
def test_other_builtin_errors_are_unexpected(exc):
    assert failure_for(exc) is None
    assert describe_failure(exc, "/a.B/C", dev=False) == INTERNAL


# -- status_for ----------------------------------------------------------------------------------


def test_status_for_carries_the_code_message_and_every_violation():
    failure = failure_for(
        drf.ValidationError({"items": [{"name": ["Required."]}], "title": ["Bad.", "Worse."]})
    )
    status = status_for(failure)
    assert isinstance(status, grpc.Status)
    assert status.code is Code.INVALID_ARGUMENT
    assert status.details == failure.message
    rpc_status = decode_status(status)
    assert rpc_status.code == code_pb2.INVALID_ARGUMENT == Code.INVALID_ARGUMENT.value[0]
    assert rpc_status.message == failure.message
    assert bad_request_of(rpc_status) == [
        ("items[0].name", "Required."),
        ("title", "Bad."),
        ("title", "Worse."),
    ]


@pytest.mark.parametrize("code", [c for c in Code if c is not Code.OK], ids=lambda c: c.name)
def test_status_for_maps_every_code_to_its_number(code):
    status = status_for(Failure(code, "m"))
    assert status.code is code
    rpc_status = decode_status(status)
    assert rpc_status.code == code.value[0]
    assert rpc_status.message == "m"
    assert list(rpc_status.details) == []


def test_status_for_a_grpc_error_with_violations():
    status = status_for(failure_for(GrpcError(Code.FAILED_PRECONDITION, "No.", [("a.b", "c")])))
    rpc_status = decode_status(status)
    assert rpc_status.code == code_pb2.FAILED_PRECONDITION
    assert bad_request_of(rpc_status) == [("a.b", "c")]


def test_status_for_internal_has_no_details():
    rpc_status = decode_status(status_for(INTERNAL))
    assert rpc_status.code == code_pb2.INTERNAL
    assert rpc_status.message == "Internal server error."
    assert list(rpc_status.details) == []


def test_abort_with_aborts_with_the_status():
    class Context:
        def abort_with_status(self, status):
            self.status = status
            raise RuntimeError("aborted")

    context = Context()
    failure = Failure(Code.NOT_FOUND, "Gone.")
    with pytest.raises(RuntimeError, match="aborted"):
        errors.abort_with(context, failure)
    assert context.status.code is Code.NOT_FOUND
    assert decode_status(context.status).message == "Gone."
