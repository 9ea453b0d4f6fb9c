"""Observability (SPEC §12): traces from a consumer's registry call to the producer's span,
statuses as the calls really ended, Prometheus metrics by status, the access log in every mode,
and client interceptors per servlet and globally.

Spans go to the SDK's in-memory exporter through a tracer provider installed for one test (the
global one, put back afterwards); the servers run in this process (``GrpcTestServer``, threaded
and asyncio), except where ``rungrpcserver`` itself is the subject.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request
from typing import Any

import grpc
import pytest
from catalog.models import Author
from catalog.services import AuthorService
from support import add_servlets, servlet_entry, start_server, stop_server

from django_grpc_bus.client import exceptions
from django_grpc_bus.client.aio import aregistry
from django_grpc_bus.client.registry import registry
from django_grpc_bus.handlers import BasicHandler
from django_grpc_bus.observability import access_log
from django_grpc_bus.observability.call_observer import CallObserver
from django_grpc_bus.testing import GrpcTestServer

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

Code = grpc.StatusCode


class BrokenListAuthorService(AuthorService):
    """Author, whose List fails after its first batch: a stream that ends INTERNAL."""

    def list(self, request, context):
        batches = super().list(request, context)
        try:
            yield next(batches)
        finally:
            batches.close()  # its query's cursor, which would hold the table
        raise RuntimeError("the stream broke")


broken_list_handler = BasicHandler()
broken_list_handler.register(BrokenListAuthorService)


@pytest.fixture
def spans(monkeypatch):
    """An SDK tracer provider as the global one, for this test; its spans in memory."""
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture(params=["threads", "asyncio"])
def local(request, settings):
    """A GrpcTestServer of the test project, as servlet ``local`` (started in the test), on the
    threaded server and on the asyncio one: both report their calls through the same Call."""

    def start(handler: Any = None, **config: Any) -> GrpcTestServer:
        server = GrpcTestServer(handler, dev=False, asyncio=request.param == "asyncio")
        for key, value in config.items():
            setattr(server.config, key, value)
        server.start()
        add_servlets(settings, local=servlet_entry(server.port))
        started.append(server)
        return server

    started: list[GrpcTestServer] = []
    yield start
    for server in started:
        server.stop()
    registry.reset()


def finished(exporter: InMemorySpanExporter, name: str, count: int = 2) -> list[Any]:
    """The ended spans named `name`, once there are `count` (a client span may end a moment
    after the call returned: its stream's last event is grpc's)."""
    deadline = time.monotonic() + 5
    while True:
        found = [span for span in exporter.get_finished_spans() if span.name == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def pair(exporter: InMemorySpanExporter, name: str) -> tuple[Any, Any]:
    """The client span and the server span of the one call to `name`."""
    found = finished(exporter, name)
    (client,) = [span for span in found if span.kind == SpanKind.CLIENT]
    (server,) = [span for span in found if span.kind == SpanKind.SERVER]
    return client, server


def assert_one_trace(client: Any, server: Any) -> None:
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote


def call_status(function, *args: Any) -> Code:
    try:
        result = function(*args)
        if not isinstance(result, dict):
            list(result)
    except exceptions.CallError as exc:
        return exc.code()
    return Code.OK


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("rpc", "request_dict", "code", "server_error"),
    [
        ("Retrieve", "existing", Code.OK, False),
        ("Retrieve", {"id": 10**6}, Code.NOT_FOUND, False),
        ("Create", {"name": ""}, Code.INVALID_ARGUMENT, False),
        ("Create", {"name": "explode"}, Code.INTERNAL, True),
    ],
    ids=["OK", "NOT_FOUND", "INVALID_ARGUMENT", "INTERNAL"],
)
def test_one_trace_from_the_registry_call_to_the_server_span(
    spans, local, rpc, request_dict, code, server_error
):
    if request_dict == "existing":
        request_dict = {"id": Author.objects.create(name="Traced").pk}
    local()

    method = registry.local.Author.method(rpc)
    assert call_status(method, request_dict) == code

    client, server = pair(spans, f"catalog.Author/{rpc}")
    assert_one_trace(client, server)
    for span in (client, server):
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == "catalog.Author"
        assert span.attributes["rpc.method"] == rpc
        assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert client.attributes["server.address"] == "127.0.0.1"
    # A client span fails for every status but OK; a server span only for the server's faults.
    assert client.status.status_code == (StatusCode.UNSET if code is Code.OK else StatusCode.ERROR)
    assert server.status.status_code == (StatusCode.ERROR if server_error else StatusCode.UNSET)
    if server_error:
        assert server.status.description.startswith("INTERNAL")
        assert [event.name for event in server.events] == ["exception"]
        assert server.events[0].attributes["exception.message"] == "secret internal detail"


@pytest.mark.django_db(transaction=True)
def test_a_stream_is_one_span_ended_with_the_stream(spans, local, settings):
    Author.objects.bulk_create(Author(name=f"Streamed {i}") for i in range(5))
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "LIST_BATCH_SIZE": 2}  # three messages
    local()

    rows = list(registry.local.Author.list())

    assert len(rows) == 5
    client, server = pair(spans, "catalog.Author/List")
    assert_one_trace(client, server)
    assert client.attributes["rpc.grpc.status_code"] == server.attributes["rpc.grpc.status_code"]
    assert server.attributes["rpc.grpc.status_code"] == 0
    # The server span covers the whole stream, every batch: it ends after it began sending.
    assert server.end_time > server.start_time


@pytest.mark.django_db(transaction=True)
def test_a_stream_that_fails_after_its_first_batch_ends_its_spans_internal(spans, local, settings):
    Author.objects.bulk_create(Author(name=f"Broken {i}") for i in range(5))
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "LIST_BATCH_SIZE": 2}
    local(broken_list_handler)

    rows = []
    with pytest.raises(exceptions.CallError) as failed:
        for row in registry.local.Author.list():
            rows.append(row)

    assert failed.value.code() == Code.INTERNAL and len(rows) == 2
    client, server = pair(spans, "catalog.Author/List")
    assert_one_trace(client, server)
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == Code.INTERNAL.value[0]
        assert span.status.status_code == StatusCode.ERROR


@pytest.mark.django_db(transaction=True)
def test_the_async_registry_is_traced_too(spans, local):
    pk = Author.objects.create(name="Awaited").pk
    local()

    async def main() -> tuple[dict, Code]:
        try:
            found = await aregistry.local.Author.retrieve({"id": pk})
            try:
                await aregistry.local.Author.retrieve({"id": 10**6})
            except exceptions.CallError as exc:
                return found, exc.code()
            return found, Code.OK
        finally:
            await aregistry.aclose()

    found, missing = asyncio.run(main())

    assert found["name"] == "Awaited" and missing == Code.NOT_FOUND
    retrieves = finished(spans, "catalog.Author/Retrieve", count=4)
    clients = [span for span in retrieves if span.kind == SpanKind.CLIENT]
    servers = [span for span in retrieves if span.kind == SpanKind.SERVER]
    assert sorted(span.attributes["rpc.grpc.status_code"] for span in clients) == [0, 5]
    for server in servers:
        (client,) = [c for c in clients if c.context.trace_id == server.context.trace_id]
        assert server.parent.span_id == client.context.span_id


@pytest.mark.django_db(transaction=True)
def test_the_access_log_line_carries_the_status_and_the_trace_id(spans, local, caplog):
    local()
    with caplog.at_level(logging.INFO, logger=access_log.LOGGER_NAME):
        call_status(registry.local.Author.retrieve, {"id": 10**6})

    _client, server = pair(spans, "catalog.Author/Retrieve")
    (record,) = [r for r in caplog.records if r.name == access_log.LOGGER_NAME]
    trace_id = format(server.context.trace_id, "032x")
    assert re.fullmatch(
        rf"/catalog\.Author/Retrieve NOT_FOUND \d+\.\dms ipv[46]:\S+ trace_id={trace_id}",
        record.getMessage(),
    )
    assert (record.grpc_status, record.trace_id) == ("NOT_FOUND", trace_id)


def test_nothing_is_recorded_without_a_tracer_or_meter_provider(settings):
    """The default: no observer, no client interceptors, so a call pays one check."""
    from django_grpc_bus.client.channels import open_channel
    from django_grpc_bus.client.config import ServletConfig

    assert CallObserver.for_server() is None
    channel = open_channel(ServletConfig.from_settings("x", servlet_entry(1)))
    try:
        assert isinstance(channel, grpc.Channel)
        assert type(channel).__module__ == "grpc._channel"  # not an intercepted channel
    finally:
        channel.close()


# -- metrics -----------------------------------------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name` whose labels include `labels` (None if there is none)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.django_db(transaction=True)
def test_metrics_count_the_calls_by_method_and_status(local):
    pk = Author.objects.create(name="Counted").pk
    server = local(metrics_address=("127.0.0.1", 0))
    url = server.built.metrics_url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)

    for _ in range(3):
        registry.local.Author.retrieve({"id": pk})
    for _ in range(2):
        call_status(registry.local.Author.retrieve, {"id": 10**6})
    call_status(registry.local.Author.create, {"name": ""})
    list(registry.local.Author.list())

    text = scrape(url)
    count = "rpc_server_duration_milliseconds_count"
    retrieve = {"rpc_service": "catalog.Author", "rpc_method": "Retrieve"}
    assert sample(text, count, **retrieve, rpc_grpc_status_code="0") == 3
    assert sample(text, count, **retrieve, rpc_grpc_status_code="5") == 2
    assert sample(text, count, rpc_method="Create", rpc_grpc_status_code="3") == 1
    assert sample(text, count, rpc_method="List", rpc_grpc_status_code="0") == 1
    assert sample(text, "rpc_server_duration_milliseconds_bucket", **retrieve, le="+Inf") in (2, 3)
    assert sample(text, "rpc_server_active_requests", **retrieve) == 0
    assert "process_cpu_seconds_total" in text

    server.stop()
    with pytest.raises(OSError):  # the endpoint stops with its server
        scrape(url)


@pytest.mark.django_db(transaction=True)
def test_without_a_metrics_port_metrics_go_to_a_configured_meter_provider(local, monkeypatch):
    from opentelemetry.metrics import _internal as metrics_api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", provider)
    pk = Author.objects.create(name="Metered").pk
    local()

    registry.local.Author.retrieve({"id": pk})
    call_status(registry.local.Author.retrieve, {"id": 10**6})

    found = {
        metric.name: metric.data.data_points
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    counts = {
        point.attributes["rpc.grpc.status_code"]: point.count
        for point in found["rpc.server.duration"]
        if point.attributes["rpc.method"] == "Retrieve"
    }
    assert counts == {0: 1, 5: 1}
    (active,) = [
        p for p in found["rpc.server.active_requests"] if p.attributes["rpc.method"] == "Retrieve"
    ]
    assert active.value == 0
    provider.shutdown()


@pytest.mark.django_db(transaction=True)
def test_a_metrics_port_in_use_is_a_server_error(local):
    from django_grpc_bus.serving.server import ServerError

    first = local(metrics_address=("127.0.0.1", 0))
    taken = first.built.observer.endpoint.port
    with pytest.raises(ServerError, match=rf"Cannot serve metrics on 127.0.0.1:{taken}"):
        local(metrics_address=("127.0.0.1", taken))


# -- rungrpcserver ------------------------------------------------------------------------------


def test_rungrpcserver_logs_each_call_and_serves_metrics_without_dev(fresh_database, settings):
    """No --dev, no LOGGING: a line per call on stderr; /metrics on the port asked for."""
    server = start_server(fresh_database, "--metrics-port", "0")
    try:
        add_servlets(settings, proc=servlet_entry(server.port))
        assert call_status(registry.proc.Author.retrieve, {"id": 10**6}) == Code.NOT_FOUND
        url = re.search(r"Metrics \(pid \d+\) on (\S+)\.\n", server.output).group(1)
        text = scrape(url)
        assert sample(text, "rpc_server_duration_milliseconds_count", rpc_grpc_status_code="5")
        deadline = time.monotonic() + 5
        while "/catalog.Author/Retrieve NOT_FOUND" not in server.output:
            assert time.monotonic() < deadline, server.output
            time.sleep(0.05)
        line = next(line for line in server.lines if "/catalog.Author/Retrieve NOT_FOUND" in line)
        assert re.fullmatch(
            r"\[\d\d/\w{3}/\d{4} [\d:]{8}\] /catalog\.Author/Retrieve NOT_FOUND \d+\.\dms "
            r"ipv[46]:\S+\n",
            line,
        )
    finally:
        registry.reset()
        stop_server(server)


def test_rungrpcserver_no_access_log(fresh_database, settings):
    server = start_server(fresh_database, "--no-access-log")
    try:
        add_servlets(settings, proc=servlet_entry(server.port))
        call_status(registry.proc.Author.retrieve, {"id": 10**6})
    finally:
        registry.reset()
        stop_server(server)
    assert "/catalog.Author/Retrieve" not in server.output


def test_workers_serve_metrics_on_consecutive_ports(fresh_database):
    from support import free_port

    first = free_port()
    server = start_server(
        fresh_database,
        "--workers",
        "2",
        "--metrics-port",
        str(first),
        "--no-access-log",
        address=f"127.0.0.1:{free_port()}",
    )
    try:
        deadline = time.monotonic() + 20
        while server.output.count("Metrics (pid") < 2:
            assert time.monotonic() < deadline, server.output
            time.sleep(0.1)
        announced = r"Metrics \(pid (\d+)\) on http://127\.0\.0\.1:(\d+)/"
        pids = set(re.findall(announced, server.output))
        assert {port for _pid, port in pids} == {str(first), str(first + 1)}
        assert len({pid for pid, _port in pids}) == 2  # one endpoint per worker
        for port in (first, first + 1):
            assert "process_cpu_seconds_total" in scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_server(server)


# -- the access log's default handler -----------------------------------------------------------


@pytest.fixture
def access_logger():
    """The access logger as the logging configuration left it, put back afterwards."""
    logger = logging.getLogger(access_log.LOGGER_NAME)
    saved = (logger.level, logger.propagate, list(logger.handlers))
    parent = logging.getLogger("django_grpc_bus")
    parent_saved = (parent.level, list(parent.handlers))
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]
    parent.setLevel(parent_saved[0])
    parent.handlers[:] = parent_saved[1]


def test_the_default_handler_is_added_only_where_logging_does_not_decide(access_logger):
    import io

    stream = io.StringIO()
    handler = access_log.install_default_handler(stream)
    assert handler is not None
    access_log.log_call("/a.B/C", "OK", 1.25, "ipv4:127.0.0.1:1")
    access_log.log_call("/a.B/D", "NOT_FOUND", 0.5, "ipv4:127.0.0.1:1", "ab" * 16)
    deadline = time.monotonic() + 5  # written by the handler's thread within FLUSH_INTERVAL
    while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(
        r"\[\d\d/\w{3}/\d{4} [\d:]{8}\] /a\.B/C OK 1\.2ms ipv4:127\.0\.0\.1:1", first
    )
    assert second.endswith("] /a.B/D NOT_FOUND 0.5ms ipv4:127.0.0.1:1 trace_id=" + "ab" * 16)
    access_log.log_call("/a.B/E", "OK", 1, "ipv4:127.0.0.1:1")
    access_log.remove_default_handler(handler)  # closing writes what is left
    assert stream.getvalue().endswith("/a.B/E OK 1.0ms ipv4:127.0.0.1:1\n")

    # LOGGING routes django_grpc_bus at DEBUG to a handler: that decides, nothing is added.
    parent = logging.getLogger("django_grpc_bus")
    parent.setLevel(logging.DEBUG)
    parent.addHandler(logging.NullHandler())
    assert access_log.install_default_handler(stream) is None
    # LOGGING silences the access logger itself: respected too.
    parent.handlers.clear()
    parent.setLevel(logging.NOTSET)
    access_logger.setLevel(logging.WARNING)
    assert access_log.install_default_handler(stream) is None


# -- client interceptors ------------------------------------------------------------------------

seen: list[tuple[str, str]] = []


class Recording(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Records (its name, the method) for every call it sees."""

    name = "recording"

    def intercept_unary_unary(self, continuation, details, request):
        seen.append((self.name, details.method))
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        seen.append((self.name, details.method))
        return continuation(details, request)


class GlobalRecording(Recording):
    name = "global"


class AsyncRecording(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        seen.append(("aio", details.method.decode()))
        return await continuation(details, request)


@pytest.mark.django_db(transaction=True)
def test_client_interceptors_globally_and_per_servlet(settings, local):
    pk = Author.objects.create(name="Intercepted").pk
    server = local()
    settings.MESSAGE_BUS = {
        **settings.MESSAGE_BUS,
        "CLIENT_INTERCEPTORS": [f"{__name__}.GlobalRecording"],
    }
    add_servlets(
        settings,
        local=servlet_entry(server.port, interceptors=[Recording, AsyncRecording()]),
        plain=servlet_entry(server.port),
    )
    seen.clear()

    registry.local.Author.retrieve({"id": pk})
    registry.plain.Author.retrieve({"id": pk})

    retrieve = "/catalog.Author/Retrieve"
    # The global one first (outermost), then the servlet's; the aio one is not for registry.
    assert [entry for entry in seen if entry[1] == retrieve] == [
        ("global", retrieve),
        ("recording", retrieve),
        ("global", retrieve),
    ]

    seen.clear()

    async def main() -> None:
        try:
            await aregistry.local.Author.retrieve({"id": pk})
        finally:
            await aregistry.aclose()

    asyncio.run(main())
    assert seen == [("aio", retrieve)]


def test_servlet_interceptors_are_checked(settings):
    from django_grpc_bus.checks import check_settings
    from django_grpc_bus.client.exceptions import ServletMisconfigured

    add_servlets(
        settings,
        bad=servlet_entry(1, interceptors=["no.such.Interceptor", object()]),
        worse=servlet_entry(1, interceptors=f"{__name__}.Recording"),
    )
    settings.MESSAGE_BUS = {**settings.MESSAGE_BUS, "CLIENT_INTERCEPTORS": ["no.such.Thing"]}
    messages = [(m.id, m.msg) for m in check_settings()]
    ids = [check_id for check_id, _ in messages]
    assert ids.count("django_grpc_bus.E015") == 3
    assert "django_grpc_bus.E012" in ids
    assert any("'no.such.Interceptor' cannot be imported" in msg for _, msg in messages)
    assert any("is not a client interceptor" in msg for _, msg in messages)
    assert any("must be a list of client interceptors" in msg for _, msg in messages)
    with pytest.raises(ServletMisconfigured, match="interceptors"):
        registry.bad  # noqa: B018
