"""The validation plan against DRF itself: the same inputs give the same data and the same errors.

Each serializer is run twice on every generated input: as it is (through its class's
``validation_plan``) and as a subclass with ``cache_fields = False``, which makes
``ModelProtoSerializer`` leave validation to DRF alone. Validity, ``validated_data`` (types and
reprs, so ``Decimal("1.0")`` is not ``Decimal("1.00")``) and ``errors`` (texts and codes) must
be identical.
"""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.core.exceptions import ValidationError as DjangoValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework import serializers as drf_serializers
from rest_framework.fields import SkipField, empty
from rest_framework.validators import UniqueTogetherValidator

from django_grpc_bus import validation_plan
from django_grpc_bus.serializers import ModelProtoSerializer

UTC = dt.timezone.utc
ABSENT = object()

# Values of every kind a request dict may hold for any field: the right type and the wrong
# ones, blanks, whitespace, NUL, out-of-range numbers, too many digits, bad dates.
ANY_VALUE = st.one_of(
    st.just(ABSENT),
    st.none(),
    st.sampled_from(["", " ", "  x ", "a\x00b", "forbidden", "one", "A", "a", "b", "1", "0"]),
    st.text(max_size=12),
    st.text(min_size=95, max_size=220, alphabet="xy "),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, 2, -1, 2**31, -(2**31) - 1, 2**63, 7]),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1.5", "12.25", "-0.001", "1e3", "123456789.1234", "12.345", "abc"]),
    st.decimals(
        allow_nan=True, allow_infinity=False, places=4, min_value=-(10**6), max_value=10**6
    ),
    st.sampled_from(["2020-02-29", "2021-02-29", "12:30:00", "25:00", "P1D", "1 02:03:04"]),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.sampled_from(["2020-02-29T10:00:00Z", "not a date", "::1", "127.0.0.1", "1.2.3"]),
    st.uuids(),
    st.sampled_from(["a@b.co", "not-an-email", "http://x.org", "ftp:/x", "a-slug", "no slug"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=2),
)


@pytest.fixture
def catalog(compiled):
    return importlib.import_module("catalog.serializers")


@pytest.fixture
def models(compiled):
    return importlib.import_module("catalog.models")


def drf_alone(serializer_class):
    """`serializer_class` validating through DRF only (the plan needs ``cache_fields``)."""
    return type(f"DRF{serializer_class.__name__}", (serializer_class,), {"cache_fields": False})


def outcome(serializer_class, data, **kwargs):
    serializer = serializer_class(data=data, **kwargs)
    try:
        valid = serializer.is_valid()
    except Exception as exc:  # DRF's own bugs (float inf for a related key: OverflowError)
        return "raised", type(exc).__name__
    if valid:
        validated = {
            name: (type(value).__name__, repr(value))
            for name, value in serializer.validated_data.items()
        }
        return True, validated
    return False, serializer.errors


def assert_same(serializer_class, values, **kwargs):
    data = {name: value for name, value in values.items() if value is not ABSENT}
    planned = outcome(serializer_class, dict(data), **kwargs)
    by_drf = outcome(drf_alone(serializer_class), dict(data), **kwargs)
    assert planned == by_drf, data


def inputs(names):
    return st.fixed_dictionaries({name: ANY_VALUE for name in names})


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def writable(serializer_class):
    return [name for name, field in serializer_class().fields.items() if not field.read_only]


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_every_field_kind_validates_as_drf_does(catalog, models, data):
    """Every model field kind of catalog.Everything, a validate_f_char hook, FKs, M2M."""
    author = models.Author.objects.get_or_create(name="A")[0]
    values = data.draw(inputs(writable(catalog.EverythingSerializer)))
    if data.draw(st.booleans()):  # the relations, sometimes a row that exists
        values["author"] = author.pk
    assert_same(catalog.EverythingSerializer, values)


def valid_everything(author, token):
    """A request dict for catalog.Everything that DRF accepts."""
    return {
        "f_int": 1, "f_bigint": 2**40, "f_smallint": -3, "f_posint": 4, "f_possmall": 5,
        "f_posbig": 6, "f_float": 1.5, "f_decimal": "12.25", "f_bool": True, "f_char": " c ",
        "f_text": "t", "f_slug": "a-slug", "f_email": "a@b.co", "f_url": "http://x.org",
        "f_uuid": "12345678-1234-5678-1234-567812345678", "f_ip": "::ffff:1.2.3.4",
        "f_filepath": "", "f_file": "f.txt", "f_image": "i.png", "f_date": "2020-02-29",
        "f_datetime": dt.datetime(2020, 2, 29, 10, tzinfo=UTC), "f_time": "12:30:00",
        "f_duration": "1 02:03:04", "f_binary": "", "f_json": {"a": 1}, "f_choice_int": 1,
        "f_choice_str": "a", "f_custom": "X", "f_null_int": None, "f_default_int": 7,
        "f_blank_char": "", "author": author.pk, "editor": None, "token": token.pk,
    }  # fmt: skip


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_a_valid_row_with_a_few_fields_changed_validates_as_drf_does(catalog, models, data):
    """Mostly valid input, so that validated_data is compared, not only errors."""
    author = models.Author.objects.get_or_create(name="A")[0]
    token = models.Token.objects.get_or_create(label="t")[0]
    values = valid_everything(author, token)
    names = writable(catalog.EverythingSerializer)
    for name in data.draw(st.lists(st.sampled_from(names), max_size=3)):
        values[name] = data.draw(ANY_VALUE)
    assert_same(catalog.EverythingSerializer, values)


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_each_value_the_plan_accepts_is_the_one_drf_returns(catalog, models, data):
    """Field by field: where the plan decides (no Defer), DRF's run_validation agrees."""
    models.Author.objects.get_or_create(name="A")
    serializer = catalog.EverythingSerializer()
    plan = validation_plan.plan_for(catalog.EverythingSerializer)
    for name, _hook, step in plan.steps:
        value = data.draw(ANY_VALUE)
        value = empty if value is ABSENT else value
        try:
            planned = ("value", step(value))
        except validation_plan.Defer:
            continue
        except SkipField:
            planned = ("skip", None)
        try:
            by_drf = ("value", serializer.fields[name].run_validation(value))
        except SkipField:
            by_drf = ("skip", None)
        except (drf_serializers.ValidationError, DjangoValidationError) as exc:
            by_drf = ("error", exc)
        assert (planned[0], type(planned[1]), repr(planned[1])) == (
            by_drf[0], type(by_drf[1]), repr(by_drf[1])
        ), (name, value)  # fmt: skip


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_unique_and_foreign_key_fields_validate_as_drf_does(catalog, models, data):
    author = models.Author.objects.get_or_create(name="A")[0]  # once per test, not per example
    models.Book.objects.get_or_create(isbn="taken", defaults={"title": "t", "author": author})
    values = data.draw(inputs(["title", "author", "isbn"]))
    values["author"] = data.draw(st.sampled_from([author.pk, author.pk + 1000, ABSENT, "x"]))
    values["isbn"] = data.draw(st.sampled_from(["taken", "free", "", None, ABSENT, "x" * 14]))
    assert_same(catalog.BookSerializer, values)


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_hooks_choices_bounds_and_unique_together_as_drf_does(compiled, models, data):
    """Declared options the model does not give: bounds, choices, blank, a default, hooks."""
    proto = importlib.import_module("generated_grpc.grpc.catalog_Book_pb2")

    class Strict(ModelProtoSerializer):
        title = drf_serializers.CharField(max_length=10, min_length=2, trim_whitespace=False)
        isbn = drf_serializers.ChoiceField(choices=["a", "b", "taken"])

        class Meta:
            model = models.Book
            proto_class = proto.BookData
            fields = ["id", "title", "author", "isbn"]
            validators = [
                UniqueTogetherValidator(
                    queryset=models.Book.objects.all(), fields=["title", "isbn"]
                )
            ]

        def validate_title(self, value):
            if value == "no":
                raise drf_serializers.ValidationError("Not this title.", code="nope")
            return value.upper()

        def validate(self, attrs):
            if attrs.get("title") == "AB":
                raise drf_serializers.ValidationError("AB is reserved.")
            return attrs

    author = models.Author.objects.get_or_create(name="A")[0]
    models.Book.objects.get_or_create(isbn="taken", defaults={"title": "TAKEN", "author": author})
    values = data.draw(inputs(["title", "author", "isbn"]))
    values["author"] = data.draw(st.sampled_from([author.pk, values["author"]]))
    values["title"] = data.draw(st.sampled_from(["ab", "no", "TAKEN", " ok ", values["title"]]))
    assert_same(Strict, values)


@pytest.mark.django_db
def test_an_update_and_a_partial_update_validate_as_drf_does(catalog, models):
    author = models.Author.objects.create(name="A")
    book = models.Book.objects.create(title="t", author=author, isbn="mine")
    other = models.Book.objects.create(title="t", author=author, isbn="theirs")
    for data in (
        {"title": "new", "author": author.pk, "isbn": "mine"},  # its own isbn: not a clash
        {"title": "new", "author": author.pk, "isbn": other.isbn},
        {"title": "", "isbn": "x"},
    ):
        assert_same(catalog.BookSerializer, data, instance=book)
        assert_same(catalog.BookSerializer, data, instance=book, partial=True)


def test_the_plan_names_what_it_leaves_to_drf(catalog):
    plan = validation_plan.plan_for(catalog.EverythingSerializer)
    assert "f_json" in plan.unplanned  # JSONField: not a field class the plan runs
    assert "tags" in plan.unplanned  # ManyRelatedField
    assert "f_int" not in plan.unplanned
    assert not plan.plain_create  # tags is a to-many write: DRF's create sets it
    book_plan = validation_plan.plan_for(catalog.BookSerializer)
    assert "UniqueValidator" in book_plan.unplanned["isbn"]
    assert book_plan.plain_create


@pytest.mark.django_db
def test_a_planned_create_saves_what_drf_saves(catalog, models):
    author = models.Author.objects.create(name="A")
    data = {"title": " T ", "author": author.pk, "isbn": "123"}
    planned = catalog.BookSerializer(data=dict(data))
    planned.is_valid(raise_exception=True)
    book = planned.save()
    assert (book.title, book.author_id, book.isbn) == ("T", author.pk, "123")
    again = drf_alone(catalog.BookSerializer)(data={**data, "isbn": "124"})
    again.is_valid(raise_exception=True)
    assert again.save().title == "T"


@pytest.mark.django_db
def test_the_valid_row_is_valid_both_ways(catalog, models):
    author = models.Author.objects.create(name="A")
    token = models.Token.objects.create(label="t")
    values = valid_everything(author, token)
    planned = outcome(catalog.EverythingSerializer, dict(values))
    assert planned[0], planned[1]
    assert planned == outcome(drf_alone(catalog.EverythingSerializer), dict(values))


def per_user(catalog, *, writable_without_context):
    """AuthorSerializer whose ``__init__`` makes ``name`` read-only for a non-staff user.

    Built without a context (as a class-level plan would be), ``name`` is writable or not as
    `writable_without_context` says: either way the plan must follow each instance's fields."""

    class PerUser(catalog.AuthorSerializer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            staff = self.context.get("staff", writable_without_context)
            if not staff:
                self.fields["name"].read_only = True

    return PerUser


@pytest.mark.django_db
@pytest.mark.parametrize("writable_without_context", [True, False])
def test_a_field_made_read_only_in_init_is_not_written(catalog, writable_without_context):
    serializer_class = per_user(catalog, writable_without_context=writable_without_context)
    serializer_class()  # a class-level plan, if any, is built now, without context
    guest = serializer_class(data={"name": "x"}, context={"staff": False})
    assert guest.is_valid()
    assert dict(guest.validated_data) == {}
    assert guest.save().name == ""  # the model's default, as DRF writes it
    staff = serializer_class(data={"name": "x"}, context={"staff": True})
    assert staff.is_valid(), staff.errors
    assert dict(staff.validated_data) == {"name": "x"}
    assert staff.save().name == "x"


@pytest.mark.django_db
def test_a_field_popped_in_init_is_not_validated(catalog):
    class NoNameForGuests(catalog.AuthorSerializer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if not self.context.get("staff"):
                self.fields.pop("name")

    NoNameForGuests()
    guest = NoNameForGuests(data={"name": "x"}, context={"staff": False})
    assert guest.is_valid() and dict(guest.validated_data) == {}
    staff = NoNameForGuests(data={"name": "x"}, context={"staff": True})
    assert staff.is_valid() and dict(staff.validated_data) == {"name": "x"}


@pytest.mark.django_db
def test_fields_changed_after_construction_are_the_ones_validated(catalog):
    """A view's ``get_serializer`` may change the fields of the serializer it returns."""
    catalog.AuthorSerializer()
    serializer = catalog.AuthorSerializer(data={"name": "x"})
    serializer.fields["name"].read_only = True
    assert serializer.is_valid() and dict(serializer.validated_data) == {}
    serializer = catalog.AuthorSerializer(data={})
    serializer.fields["name"].required = False
    assert serializer.is_valid(), serializer.errors


@pytest.mark.django_db
def test_validators_set_in_init_run(catalog, models):
    class Unique(catalog.AuthorSerializer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.validators = [
                UniqueTogetherValidator(queryset=models.Author.objects.all(), fields=["name"])
            ]

    models.Author.objects.create(name="taken")
    Unique()
    serializer = Unique(data={"name": "taken"})
    assert not serializer.is_valid()
    assert serializer.errors["non_field_errors"][0].code == "unique"


def test_a_serializer_that_may_change_its_fields_per_instance_is_not_planned(catalog):
    class WithInit(catalog.AuthorSerializer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    class WithFields(catalog.AuthorSerializer):
        @property
        def fields(self):
            return super().fields

    assert validation_plan.fields_fixed_per_class(catalog.AuthorSerializer)
    assert not validation_plan.fields_fixed_per_class(WithInit)
    assert not validation_plan.fields_fixed_per_class(WithFields)
    assert not validation_plan.fields_fixed_per_class(type("Sub", (WithInit,), {}))
    assert validation_plan.reads_database(WithInit)  # validated inside the write transaction


@pytest.mark.django_db
def test_fields_changed_by_an_overridden_to_internal_value_are_the_ones_validated(catalog):
    class Massaging(catalog.AuthorSerializer):
        def to_internal_value(self, data):
            self.fields["name"].read_only = True
            return super().to_internal_value(data)

    Massaging()
    serializer = Massaging(data={"name": "x"})
    assert serializer.is_valid() and dict(serializer.validated_data) == {}


@pytest.mark.django_db
def test_a_stock_serializer_validates_and_creates_through_the_plan(catalog, monkeypatch):
    """The per-instance checks leave the plan on where the fields are the class's."""
    monkeypatch.setattr(
        drf_serializers.ModelSerializer,
        "create",
        lambda self, data: pytest.fail("DRF's create() ran"),
    )
    serializer = catalog.AuthorSerializer(data={"name": "x"})
    assert serializer.is_valid()
    assert serializer._validated_by_plan and "fields" not in serializer.__dict__
    assert serializer.save().name == "x"
