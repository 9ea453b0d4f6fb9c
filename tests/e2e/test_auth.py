"""Authentication and permissions of a real `rungrpcserver`, with DRF's own classes.

Users and tokens are created in the servers' database (a fresh one for this module) with
`manage.py shell -c`; credentials travel as call metadata (`authorization: Token <key>`).

- `perms`: TokenAuthentication + DjangoModelPermissions: no or bad credentials are
  UNAUTHENTICATED; a user without model permissions may List/Retrieve (GET) but not write
  (PERMISSION_DENIED); add/change/delete_author unlock Create, Update/PartialUpdate, Destroy.
- `authenticated`: TokenAuthentication + IsAuthenticated: any valid token passes.
- `protected`: PROTECT_HEALTH_AND_REFLECTION: health and reflection need a token too.
- The client sends a servlet's `metadata` from SERVLETS with every call (and reflection).

Every server is a subprocess stopped by its PID; every call has a deadline.
"""

from __future__ import annotations

import json

import grpc
import pytest
from catalog.models import Author
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from support import bus_env, db_query, run_django, running_server, servlet_entry

from django_grpc_bus.client import exceptions
from django_grpc_bus.client.registry import registry
from django_grpc_bus.testing import ServerProcess, stub_for

TIMEOUT = 5
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
TOKEN_AUTH = ["rest_framework.authentication.TokenAuthentication"]
REFLECTION_METHODS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}

SETUP = """
import json
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from catalog.models import Author

keys = {}
for name in ("reader", "writer", "member", "guard", "inactive"):
    user = User.objects.create_user(name, is_active=name != "inactive")
    keys[name] = Token.objects.create(user=user).key
keys["author"] = Author.objects.create(name="seed").id
print("KEYS=" + json.dumps(keys))
"""

GRANT = """
from django.contrib.auth.models import Permission, User
permission = Permission.objects.get(codename={codename!r}, content_type__app_label="catalog")
User.objects.get(username={user!r}).user_permissions.add(permission)
"""


def grant(database_url: str, user: str, codename: str) -> None:
    run_django(database_url, "shell", "-c", GRANT.format(user=user, codename=codename))


def token(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Token {key}")]


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    """The status a unary call (or a whole stream) ends with."""
    try:
        result = call(*args, timeout=TIMEOUT, **kwargs)
        if not hasattr(result, "SerializeToString"):  # a stream: read it to the end
            for _ in result:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def auth_server(database_url: str, permission: str, protect: bool = False, **options):
    """A server with TokenAuthentication and the permission class `permission`, for a block."""
    settings = {
        "DEFAULT_AUTHENTICATION_CLASSES": TOKEN_AUTH,
        "DEFAULT_PERMISSION_CLASSES": [permission],
    }
    if protect:
        settings["PROTECT_HEALTH_AND_REFLECTION"] = True
    return running_server(database_url, env=bus_env(**settings), stop_timeout=15, **options)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(fresh_database) -> dict:
    """Token keys of the users (none has a permission yet) and the id of one author."""
    result = run_django(fresh_database, "shell", "-c", SETUP)
    line = next(line for line in result.stdout.splitlines() if line.startswith("KEYS="))
    return json.loads(line.removeprefix("KEYS="))


@pytest.fixture(scope="module")
def perms_server(fresh_database, keys):
    with auth_server(fresh_database, "rest_framework.permissions.DjangoModelPermissions") as server:
        yield server


@pytest.fixture(scope="module")
def authenticated_server(fresh_database, keys):
    with auth_server(fresh_database, "rest_framework.permissions.IsAuthenticated") as server:
        yield server


@pytest.fixture(scope="module")
def protected_server(fresh_database, keys):
    # The readiness check itself needs a token: the user exists before the server starts.
    with auth_server(
        fresh_database,
        "rest_framework.permissions.IsAuthenticated",
        protect=True,
        health_metadata=token(keys["guard"]),
        start_timeout=15,
    ) as server:
        yield server


@pytest.fixture
def author_stub(request):
    """`author_stub(server)`: a generated AuthorStub on a channel closed after the test."""
    channels = []

    def make(server: ServerProcess):
        channel = grpc.insecure_channel(server.target)
        channels.append(channel)
        return stub_for(Author, channel)

    yield make
    for channel in channels:
        channel.close()


def messages():
    from generated_grpc.grpc import Author_pb2

    return Author_pb2


def health_code(target: str, metadata=None) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


def reflection_code(target: str, version: str, metadata=None) -> grpc.StatusCode:
    """List the services through reflection `version`; OK only if catalog.Author is listed."""
    with grpc.insecure_channel(target) as channel:
        info = channel.stream_stream(
            REFLECTION_METHODS[version],
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            replies = list(
                info(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    timeout=TIMEOUT,
                    metadata=metadata,
                )
            )
        except grpc.RpcError as exc:
            return exc.code()
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "catalog.Author" in names, names
    return grpc.StatusCode.OK


# -- TokenAuthentication + DjangoModelPermissions ------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(None, id="none"),
        pytest.param(
            [("authorization", "Token 0000000000000000000000000000000000000000")], id="wrong"
        ),
        pytest.param([("authorization", "Token")], id="keyword-only"),
        pytest.param([("authorization", "Token a b")], id="two-words"),
        pytest.param("bearer", id="bearer-keyword"),  # a valid key, but not TokenAuthentication's
        pytest.param("inactive", id="inactive-user"),
        pytest.param([("x-api-key", "whatever")], id="other-header"),
    ],
)
def test_missing_or_bad_credentials_are_unauthenticated(perms_server, author_stub, keys, metadata):
    pb = messages()
    if metadata == "bearer":
        metadata = [("authorization", f"Bearer {keys['reader']}")]
    elif metadata == "inactive":
        metadata = token(keys["inactive"])
    stub = author_stub(perms_server)
    lookup = pb.AuthorLookupRequest(id=keys["author"])
    assert code_of(stub.Retrieve, lookup, metadata=metadata) == UNAUTHENTICATED
    assert code_of(stub.List, pb.AuthorListRequest(), metadata=metadata) == UNAUTHENTICATED
    assert code_of(stub.Create, pb.AuthorData(name="nope"), metadata=metadata) == UNAUTHENTICATED
    assert code_of(stub.Destroy, lookup, metadata=metadata) == UNAUTHENTICATED
    # Nothing was written or deleted.
    reply = stub.Retrieve(lookup, timeout=TIMEOUT, metadata=token(keys["reader"]))
    assert reply.name == "seed"


def test_unauthenticated_details_do_not_echo_the_token(perms_server, author_stub):
    secret = "f" * 40
    stub = author_stub(perms_server)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Retrieve(
            messages().AuthorLookupRequest(id=1),
            timeout=TIMEOUT,
            metadata=[("authorization", f"Token {secret}")],
        )
    assert refused.value.code() == UNAUTHENTICATED
    assert secret not in (refused.value.details() or "")


def test_user_without_model_permissions_reads_but_cannot_write(perms_server, author_stub, keys):
    pb = messages()
    stub = author_stub(perms_server)
    reader = token(keys["reader"])
    lookup = pb.AuthorLookupRequest(id=keys["author"])
    # DjangoModelPermissions lets any authenticated user GET.
    assert stub.Retrieve(lookup, timeout=TIMEOUT, metadata=reader).name == "seed"
    rows = [
        row.id
        for batch in stub.List(pb.AuthorListRequest(), timeout=TIMEOUT, metadata=reader)
        for row in batch.results
    ]
    assert keys["author"] in rows
    # Writes need add/change/delete_author.
    data = pb.AuthorData(id=keys["author"], name="changed")
    patch = pb.AuthorPartialUpdateRequest(
        data=data, update_mask=field_mask_pb2.FieldMask(paths=["name"])
    )
    assert code_of(stub.Create, pb.AuthorData(name="denied"), metadata=reader) == PERMISSION_DENIED
    assert code_of(stub.Update, data, metadata=reader) == PERMISSION_DENIED
    assert code_of(stub.PartialUpdate, patch, metadata=reader) == PERMISSION_DENIED
    assert code_of(stub.Destroy, lookup, metadata=reader) == PERMISSION_DENIED
    # None of them changed anything.
    assert stub.Retrieve(lookup, timeout=TIMEOUT, metadata=reader).name == "seed"
    names = {
        row.name
        for batch in stub.List(pb.AuthorListRequest(), timeout=TIMEOUT, metadata=reader)
        for row in batch.results
    }
    assert "denied" not in names


def test_model_permissions_unlock_each_write(perms_server, author_stub, keys, fresh_database):
    """add_author -> Create; change_author -> Update and PartialUpdate; delete_author -> Destroy.
    Each permission is checked per call (the user is loaded afresh): no server restart."""
    pb = messages()
    stub = author_stub(perms_server)
    writer = token(keys["writer"])

    assert code_of(stub.Create, pb.AuthorData(name="w1"), metadata=writer) == PERMISSION_DENIED
    grant(fresh_database, "writer", "add_author")
    created = stub.Create(pb.AuthorData(name="w1"), timeout=TIMEOUT, metadata=writer)
    assert created.id > 0 and created.name == "w1"

    data = pb.AuthorData(id=created.id, name="w2")
    patch = pb.AuthorPartialUpdateRequest(
        data=pb.AuthorData(id=created.id, name="w3"),
        update_mask=field_mask_pb2.FieldMask(paths=["name"]),
    )
    lookup = pb.AuthorLookupRequest(id=created.id)
    assert code_of(stub.Update, data, metadata=writer) == PERMISSION_DENIED
    assert code_of(stub.PartialUpdate, patch, metadata=writer) == PERMISSION_DENIED
    assert code_of(stub.Destroy, lookup, metadata=writer) == PERMISSION_DENIED
    grant(fresh_database, "writer", "change_author")
    assert stub.Update(data, timeout=TIMEOUT, metadata=writer).name == "w2"
    assert stub.PartialUpdate(patch, timeout=TIMEOUT, metadata=writer).name == "w3"

    assert code_of(stub.Destroy, lookup, metadata=writer) == PERMISSION_DENIED
    grant(fresh_database, "writer", "delete_author")
    stub.Destroy(lookup, timeout=TIMEOUT, metadata=writer)
    assert code_of(stub.Retrieve, lookup, metadata=writer) == grpc.StatusCode.NOT_FOUND

    # The other user's rights did not change with the writer's.
    reader = token(keys["reader"])
    assert code_of(stub.Create, pb.AuthorData(name="r"), metadata=reader) == PERMISSION_DENIED


# -- TokenAuthentication + IsAuthenticated -------------------------------------------------------


def test_is_authenticated_lets_any_valid_token_write(authenticated_server, author_stub, keys):
    pb = messages()
    stub = author_stub(authenticated_server)
    member = token(keys["member"])  # no model permissions at all
    created = stub.Create(pb.AuthorData(name="member's"), timeout=TIMEOUT, metadata=member)
    lookup = pb.AuthorLookupRequest(id=created.id)
    assert stub.Retrieve(lookup, timeout=TIMEOUT, metadata=member).name == "member's"
    stub.Destroy(lookup, timeout=TIMEOUT, metadata=member)

    assert code_of(stub.Retrieve, lookup) == UNAUTHENTICATED
    assert code_of(stub.Create, pb.AuthorData(name="anon")) == UNAUTHENTICATED
    assert code_of(stub.List, pb.AuthorListRequest()) == UNAUTHENTICATED
    bad = [("authorization", "Token " + "0" * 40)]
    assert code_of(stub.Create, pb.AuthorData(name="anon"), metadata=bad) == UNAUTHENTICATED


# -- the client: per-servlet and per-call metadata -----------------------------------------------


def servlet(server: ServerProcess, **extra) -> dict:
    return servlet_entry(server.port, TIMEOUT, **extra)


def test_client_sends_servlet_metadata(settings, perms_server, keys):
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "SERVLETS": {
            "s": servlet(perms_server, metadata={"authorization": f"Token {keys['reader']}"}),
            "plain": servlet(perms_server),
        },
    }
    assert registry.s.Author.retrieve({"id": keys["author"]})["name"] == "seed"
    assert keys["author"] in {row["id"] for row in registry.s.Author.list()}
    with pytest.raises(exceptions.CallError) as refused:
        registry.plain.Author.retrieve({"id": keys["author"]})
    assert refused.value.code() == UNAUTHENTICATED
    # Authenticated but without add_author: the servlet's credentials were the reader's.
    with pytest.raises(exceptions.CallError) as denied:
        registry.s.Author.create({"name": "nope"})
    assert denied.value.code() == PERMISSION_DENIED
    # Per-call metadata works on a servlet without defaults.
    reader = {"authorization": f"Token {keys['reader']}"}
    assert (
        registry.plain.Author.retrieve({"id": keys["author"]}, metadata=reader)["id"]
        == (keys["author"])
    )


def test_client_servlet_metadata_covers_protected_reflection(settings, protected_server, keys):
    """Against PROTECT_HEALTH_AND_REFLECTION the catalog (reflection) itself needs the token."""
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "SERVLETS": {
            "s": servlet(protected_server, metadata={"authorization": f"Token {keys['member']}"}),
            "plain": servlet(protected_server),
        },
    }
    assert registry.s.Author.retrieve({"id": keys["author"]})["name"] == "seed"
    with pytest.raises(exceptions.CallError) as refused:
        registry.plain.Author.retrieve({"id": keys["author"]})
    assert refused.value.code() == UNAUTHENTICATED
    assert not isinstance(refused.value, exceptions.ServletUnavailable)


# -- health and reflection -----------------------------------------------------------------------


def test_health_and_reflection_are_open_by_default(perms_server):
    """PROTECT_HEALTH_AND_REFLECTION is False: probes and tools need no credentials, even
    though every service call does."""
    assert health_code(perms_server.target) == grpc.StatusCode.OK
    assert reflection_code(perms_server.target, "v1") == grpc.StatusCode.OK
    assert reflection_code(perms_server.target, "v1alpha") == grpc.StatusCode.OK


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(None, id="none"),
        pytest.param("wrong", id="wrong"),
        pytest.param("inactive", id="inactive"),
    ],
)
def test_protected_health_and_reflection_refuse_without_a_valid_token(
    protected_server, keys, credentials
):
    metadata = None
    if credentials == "wrong":
        metadata = [("authorization", "Token " + "1" * 40)]
    elif credentials == "inactive":
        metadata = token(keys["inactive"])
    target = protected_server.target
    assert health_code(target, metadata) == UNAUTHENTICATED
    assert reflection_code(target, "v1", metadata) == UNAUTHENTICATED
    assert reflection_code(target, "v1alpha", metadata) == UNAUTHENTICATED


def test_protected_health_and_reflection_answer_with_a_token(protected_server, keys):
    target = protected_server.target
    for user in ("guard", "reader"):  # any authenticated user; no permission needed
        metadata = token(keys[user])
        assert health_code(target, metadata) == grpc.StatusCode.OK
        assert reflection_code(target, "v1", metadata) == grpc.StatusCode.OK
        assert reflection_code(target, "v1alpha", metadata) == grpc.StatusCode.OK


def test_protected_health_watch_needs_a_token(protected_server, keys):
    with grpc.insecure_channel(protected_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError) as refused:
            next(watch)
        assert refused.value.code() == UNAUTHENTICATED
        watch = health.Watch(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT, metadata=token(keys["guard"])
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


def test_protected_health_with_a_failing_token_lookup_is_not_unknown(
    protected_server, perms_server, keys, fresh_database
):
    """The token table unreachable: health and services answer a status from the error table,
    never gRPC's bare UNKNOWN; and recover once it is back. (A table that is not there is
    FAILED_PRECONDITION, naming migrate; an unreachable database UNAVAILABLE; anything else
    INTERNAL.)"""
    acceptable = {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    }
    guard = token(keys["guard"])
    lookup = messages().AuthorLookupRequest(id=keys["author"])
    with grpc.insecure_channel(perms_server.target) as channel:
        stub = stub_for(Author, channel)
        db_query(fresh_database, "ALTER TABLE authtoken_token RENAME TO authtoken_token_away")
        try:
            assert health_code(protected_server.target, guard) in acceptable
            assert code_of(stub.Retrieve, lookup, metadata=guard) in acceptable
        finally:
            db_query(fresh_database, "ALTER TABLE authtoken_token_away RENAME TO authtoken_token")
        assert health_code(protected_server.target, guard) == grpc.StatusCode.OK
        assert stub.Retrieve(lookup, timeout=TIMEOUT, metadata=guard).id == keys["author"]
