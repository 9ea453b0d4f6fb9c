"""Fields a serializer changes per call (read-only for some users) are the ones a Create writes.

A ``ModelProtoSerializer`` validates through a plan built once per class; one whose fields
differ per instance (an ``__init__`` of the user's, or fields changed by the service's
``get_serializer``) must be validated as DRF validates that instance: a field read-only for this
caller is not written, a field writable for this caller is not dropped.
"""

from __future__ import annotations

import pytest
from catalog.models import Author
from catalog.serializers import AuthorSerializer
from catalog.services import AuthorService

from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.testing import GrpcTestServer

TIMEOUT = 10


class NameForStaffOnly(AuthorSerializer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.context.get("staff"):
            self.fields["name"].read_only = True


class NameForGuestsOnly(AuthorSerializer):
    """Built without a context, ``name`` is writable: the class-level plan would write it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.context.get("staff") is False:
            self.fields["name"].read_only = True


class StaffFromMetadata(AuthorService):
    def get_serializer_context(self):
        metadata = dict(self.context.invocation_metadata())
        return {**super().get_serializer_context(), "staff": metadata.get("x-staff") == "yes"}


class InitStaffOnly(StaffFromMetadata):
    serializer_class = NameForStaffOnly


class InitGuestsOnly(StaffFromMetadata):
    serializer_class = NameForGuestsOnly


class GetSerializerStaffOnly(StaffFromMetadata):
    """The stock serializer, whose field the service makes read-only after building it."""

    def get_serializer(self, *args, **kwargs):
        serializer = super().get_serializer(*args, **kwargs)
        if not serializer.context["staff"]:
            serializer.fields["name"].read_only = True
        return serializer


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("service", "staff_writes", "guest_writes"),
    [
        (InitStaffOnly, True, False),
        (InitGuestsOnly, True, False),
        (GetSerializerStaffOnly, True, False),
    ],
    ids=["init-read-only-without-context", "init-writable-without-context", "get_serializer"],
)
@pytest.mark.parametrize("asyncio", [False, True], ids=["threaded", "asyncio"])
def test_a_served_create_writes_the_fields_writable_for_its_caller(
    compiled, service, staff_writes, guest_writes, asyncio
):
    from generated_grpc.grpc import Author_pb2 as pb

    handler = BasicHandler()
    handler.register(service)
    with GrpcTestServer(handler, asyncio=asyncio) as server:
        stub = server.stub(Author)
        # The class's plan, if one were used, is built by the first call, of either kind.
        for staff, writes in (("no", guest_writes), ("yes", staff_writes), ("no", guest_writes)):
            created = stub.Create(
                pb.AuthorData(name=f"by {staff}"), metadata=[("x-staff", staff)], timeout=TIMEOUT
            )
            expected = f"by {staff}" if writes else ""
            assert created.name == expected
            assert Author.objects.get(pk=created.id).name == expected


@pytest.mark.django_db(transaction=True)
def test_a_served_create_of_a_stock_serializer_still_uses_the_plan(compiled, monkeypatch):
    """The fix must not turn the plan off for serializers whose fields are their class's."""
    from generated_grpc.grpc import Author_pb2 as pb

    planned: list[bool] = []
    original = AuthorSerializer._planned

    def spy(self):
        planned.append(original(self))
        return planned[-1]

    monkeypatch.setattr(AuthorSerializer, "_planned", spy)
    handler = BasicHandler()
    handler.register(AuthorService)
    with GrpcTestServer(handler, asyncio=False) as server:
        created = server.stub(Author).Create(pb.AuthorData(name="Planned"), timeout=TIMEOUT)
    assert created.name == "Planned"
    assert planned and all(planned)


class CountingStock(AuthorService):
    validations = 0

    def validated_serializer(self, request):
        type(self).validations += 1
        return super().validated_serializer(request)


class Counting(CountingStock, GetSerializerStaffOnly):
    validations = 0


@pytest.mark.django_db(transaction=True)
def test_fields_changed_by_get_serializer_are_validated_inside_the_transaction(compiled):
    """Create validates before its transaction only where the class says validation reads
    nothing; an instance whose fields get_serializer() changed is validated again inside."""
    from generated_grpc.grpc import Author_pb2 as pb

    for service, validations in ((CountingStock, 1), (Counting, 2)):
        handler = BasicHandler()
        handler.register(service)
        with GrpcTestServer(handler, asyncio=False) as server:
            server.stub(Author).Create(pb.AuthorData(name="x"), timeout=TIMEOUT)
        assert service.validations == validations
