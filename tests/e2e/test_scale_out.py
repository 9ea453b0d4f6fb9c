"""Scale out (SPEC §13): three replicas behind one gRPC target, one SIGKILLed and one SIGTERMed
under load.

Two targets, each naming three `rungrpcserver` replicas on loopback:

- ``dns://127.0.0.1:<p>/fleet.test:<port>``: a DNS name with records 127.0.0.1, 127.0.0.2
  (A) and ::1 (AAAA), one replica on each address, the same port. This machine's /etc/hosts
  gives ``localhost`` no ::1, so the name is served by a small DNS server of the test's own
  (gRPC's c-ares resolver asks the DNS server named in the target's authority);
- ``ipv4:127.0.0.1:<a>,127.0.0.1:<b>,127.0.0.1:<c>``: three ports.

Readers (Book Retrieve), listers (Book List, read slowly, so that streams are cut mid-way) and
writers (Author Create) run through the target; slow creates are in flight when one replica is
SIGKILLed, and a second replica is SIGTERMed a moment later. Then: calls were spread over all
three replicas (counted in their access logs); no Retrieve and no List failed, and every List
gave every row exactly once, in order (those cut were resumed by page token); a write in flight
on the killed replica failed once (UNAVAILABLE) and was not retried elsewhere (its row is
nowhere); no write is stored twice, and every acknowledged write is stored. A figures line is
printed.

About 25 s per target on 2 shared cores (six server start-ups, 6 s of load).
"""

from __future__ import annotations

import random
import re
import signal
import socket
import sqlite3
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from support import (
    SMALL_WINDOW,
    TESTS_DIR,
    add_servlets,
    bus_env,
    db_execute,
    db_query,
    django_command_env,
    insert_authors,
    new_database,
)

from django_grpc_bus.client import servlet as servlet_module
from django_grpc_bus.client.registry import registry
from django_grpc_bus.testing import ServerProcess

ROWS = 1000  # books every List must return, each exactly once
BATCH = 20  # LIST_BATCH_SIZE: a List is 50 messages of about 4 kB, so a cut lands mid-stream
# Rows big enough that a List (about 200 kB) is far more than HTTP/2 lets a server send ahead
# of a slow reader, so a List is still streaming when its replica dies.
TITLE = "t" * 180
GRACE = 6
LOAD = 6.0  # seconds of load in all
KILL_AT, TERM_AT = 2.0, 3.0  # seconds into the load
SLOW_CREATES = 6  # in flight when the kill comes (round_robin puts some on each replica)
SLOW = 2.5  # seconds each sleeps before saving
# Threads per replica: Lists read slowly and slow creates each hold one for seconds; with too
# few, calls wait for a thread (and a List that has not started is retried whole by gRPC's
# retry policy when its replica dies, rather than cut and resumed).
WORKERS = 24
PAUSED_LISTS = 6  # Lists paused after their first row across the kill (some on the victim)
CALL_TIMEOUT = 15
ACCESS = re.compile(r"/catalog\.(?:Author|Book)/(\w+) (\w+) ")


class MiniDNS:
    """A UDP DNS server on loopback answering A and AAAA for one name, nothing else."""

    def __init__(self, name: str, ipv4: list[str], ipv6: list[str]) -> None:
        self.name, self.ipv4, self.ipv6 = name, ipv4, ipv6
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
                self.sock.sendto(self._answer(data), peer)
            except OSError:
                return

    def _answer(self, data: bytes) -> bytes:
        ident = struct.unpack("!H", data[:2])[0]
        pos, labels = 12, []
        while data[pos]:
            length = data[pos]
            labels.append(data[pos + 1 : pos + 1 + length].decode().lower())
            pos += length + 1
        qtype = struct.unpack("!H", data[pos + 1 : pos + 3])[0]
        name = ".".join(labels)
        self.queries.append((name, qtype))
        records: list[tuple[int, bytes]] = []
        if name == self.name and qtype == 1:
            records = [(1, socket.inet_pton(socket.AF_INET, ip)) for ip in self.ipv4]
        elif name == self.name and qtype == 28:
            records = [(28, socket.inet_pton(socket.AF_INET6, ip)) for ip in self.ipv6]
        flags = 0x8180 | (0 if name == self.name else 3)  # a response; NXDOMAIN for others
        header = struct.pack("!HHHHHH", ident, flags, 1, len(records), 0, 0)
        answers = b"".join(
            struct.pack("!HHHIH", 0xC00C, kind, 1, 5, len(rdata)) + rdata for kind, rdata in records
        )
        return header + data[12 : pos + 5] + answers

    def close(self) -> None:
        self.sock.close()


class Replica(ServerProcess):
    """A replica on `host` (127.0.0.1, 127.0.0.2 or ::1), checked for readiness there."""

    def __init__(self, database_url: str, host: str, port: int = 0) -> None:
        self.host = host
        bracketed = f"[{host}]" if ":" in host else host
        super().__init__(
            [sys.executable, "-m", "django"],
            cwd=TESTS_DIR,
            env=django_command_env(
                database_url,
                **bus_env(GRACE_PERIOD=GRACE, LIST_BATCH_SIZE=BATCH, MAX_WORKERS=WORKERS),
            ),
            address=f"{bracketed}:{port}",
        )

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def calls(self) -> Counter:
        """Calls to catalog.Author and Book this replica logged, by method and status."""
        return Counter(f"{m} {s}" for m, s in ACCESS.findall(self.output))


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    ok: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, code, details)
    lists_wrong: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # written name -> id
    failed_writes: dict[str, str] = field(default_factory=dict)

    def fail(self, kind: str, exc: grpc.RpcError) -> None:
        with self.lock:
            self.failures.append((kind, exc.code().name, exc.details() or ""))


def run_load(
    servlet: Any, isbns: list[str], ledger: Ledger, stop: threading.Event
) -> tuple[list[threading.Thread], Any]:
    def reader(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            try:
                isbn = rng.choice(isbns)
                row = servlet.Book.retrieve({"isbn": isbn}, timeout=CALL_TIMEOUT)
                with ledger.lock:
                    ledger.ok["retrieve"] += 1
                assert row["isbn"] == isbn
            except grpc.RpcError as exc:
                ledger.fail("retrieve", exc)

    def lister(index: int) -> None:
        while not stop.is_set():
            got: list[str] = []
            try:
                for row in servlet.Book.list(timeout=CALL_TIMEOUT):
                    got.append(row["isbn"])
                    time.sleep(0.0005)  # a slow consumer: the stream stays open a while
            except grpc.RpcError as exc:
                ledger.fail("list", exc)
                continue
            with ledger.lock:
                ledger.ok["list"] += 1
                if got != isbns:
                    ledger.lists_wrong.append(f"{len(got)} rows, {len(set(got))} distinct")

    def writer(index: int) -> None:
        for number in range(100_000):
            if stop.is_set():
                return
            name = f"w-{index}-{number}"
            write(name)

    def write(name: str) -> None:
        try:
            row = servlet.Author.create({"name": name}, timeout=CALL_TIMEOUT)
            with ledger.lock:
                ledger.acked[name] = row["id"]
                ledger.ok["create"] += 1
        except grpc.RpcError as exc:
            with ledger.lock:
                ledger.failed_writes[name] = f"{exc.code().name} {exc.details()}"
            ledger.fail("create", exc)
            time.sleep(0.02)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=lister, args=(i,)) for i in range(3)]
    threads += [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    return threads, write


def paused_list(servlet: Any, isbns: list[str], ledger: Ledger) -> None:
    got: list[str] = []
    try:
        for row in servlet.Book.list(timeout=CALL_TIMEOUT):
            got.append(row["isbn"])
            if len(got) == 1:
                time.sleep(1.0)  # the kill comes now
    except grpc.RpcError as exc:
        ledger.fail("list", exc)
        return
    with ledger.lock:
        ledger.ok["list"] += 1
        if got != isbns:
            ledger.lists_wrong.append(f"{len(got)} rows, {len(set(got))} distinct")


def scale_out(database_url: str, settings, replicas: list[Replica], target: str) -> str:
    (author,) = insert_authors(database_url, ["fleet author"])
    isbns = [f"{978_000_000_0000 + i}" for i in range(ROWS)]
    db_execute(
        database_url,
        "INSERT INTO catalog_book (title, author_id, isbn) VALUES (%s, %s, %s)",
        [(f"{TITLE} {i}", author, isbn) for i, isbn in enumerate(isbns)],
    )
    # List's order: the model's (none), then by primary key: the order inserted.
    isbns = [
        isbn for (isbn,) in db_query(database_url, "SELECT isbn FROM catalog_book ORDER BY id")
    ]
    add_servlets(
        settings,
        fleet={"target": target, "timeout": CALL_TIMEOUT, "options": SMALL_WINDOW},
    )
    servlet = registry.fleet
    resumes: list[int] = []
    real_resume = servlet_module.RPC.resume_request

    def counting_resume(self, *args):
        resumed = real_resume(self, *args)
        if resumed is not None:
            resumes.append(1)
        return resumed

    servlet_module.RPC.resume_request = counting_resume
    ledger = Ledger()
    stop = threading.Event()
    try:
        servlet.Book.retrieve({"isbn": isbns[0]})  # the catalog, before the clock starts
        # Calls spread over all three: round_robin, in turn.
        before = [sum(r.calls().values()) for r in replicas]
        for isbn in isbns[:90]:
            servlet.Book.retrieve({"isbn": isbn})
        time.sleep(0.3)  # the access logs' buffers
        spread = [sum(r.calls().values()) - b for r, b in zip(replicas, before, strict=True)]
        assert all(count >= 20 for count in spread), spread
        spread_figures = f"90 Retrieves one after another: {spread} per replica"
        started = time.monotonic()
        threads, write = run_load(servlet, isbns, ledger, stop)
        time.sleep(KILL_AT - 0.6)
        slow = [
            threading.Thread(target=write, args=(f"slow:{SLOW}:slow-{i}",))
            for i in range(SLOW_CREATES)
        ]
        # Lists that have their first rows when the kill comes, and read on after it.
        slow += [
            threading.Thread(target=paused_list, args=(servlet, isbns, ledger))
            for _ in range(PAUSED_LISTS)
        ]
        for thread in slow:
            thread.start()
        time.sleep(0.6)  # the slow creates sleep on their replicas now
        replicas[0].process.send_signal(signal.SIGKILL)
        time.sleep(TERM_AT - KILL_AT)
        replicas[1].signal(signal.SIGTERM)
        time.sleep(max(LOAD - (time.monotonic() - started), 0))
        stop.set()
        for thread in [*threads, *slow]:
            thread.join(CALL_TIMEOUT + 10)
        assert not any(thread.is_alive() for thread in [*threads, *slow])
        assert replicas[1].wait(timeout=GRACE + 5) == 0, replicas[1].output
    finally:
        stop.set()
        servlet_module.RPC.resume_request = real_resume
        for replica in replicas:
            replica.stop(timeout=15)

    per_replica = {r.target: sum(r.calls().values()) for r in replicas}
    figures = (
        f"{target}: {spread_figures}; under load, calls per replica {per_replica} (the killed "
        "one's unflushed access log lost); "
        f"ok {dict(ledger.ok)}; lists resumed after a cut: {len(resumes)}; "
        f"failures {Counter((k, c) for k, c, _ in ledger.failures)}"
    )
    print("\nscale-out:", figures)

    # Calls spread over all three replicas.
    assert all(count > 0 for count in per_replica.values()), figures
    # No read failed; every List gave every row once, in order; at least one was resumed.
    assert [f for f in ledger.failures if f[0] != "create"] == [], figures
    assert ledger.lists_wrong == [], figures
    assert ledger.ok["list"] >= 3 and ledger.ok["retrieve"] >= 30, figures
    assert resumes, figures
    # Writes: failures are UNAVAILABLE only (the killed replica's in-flight writes, the
    # draining one's refusals); a slow write in flight on the killed replica failed.
    assert {code for kind, code, _ in ledger.failures if kind == "create"} <= {"UNAVAILABLE"}
    slow_failed = [name for name in ledger.failed_writes if name.startswith("slow:")]
    assert slow_failed, figures
    rows = db_query(
        database_url,
        "SELECT name, COUNT(*) FROM catalog_author WHERE name LIKE %s OR name LIKE %s "
        "GROUP BY name",
        ("w-%", "slow:%"),
    )
    stored = dict(rows)
    assert [name for name, count in stored.items() if count > 1] == []  # none written twice
    assert set(ledger.acked) <= set(stored)  # every acknowledged write stored
    # The failed slow writes were not retried on another replica: no row anywhere.
    assert [name for name in slow_failed if name in stored] == [], (
        [(n, ledger.failed_writes[n]) for n in slow_failed],
        [f for f in ledger.failures if f[0] == "create"],
        stored,
    )
    assert ledger.ok["create"] >= 3, figures
    return figures


@pytest.fixture
def database(tmp_path, compiled):
    """A new database of the test's own (its List must see its own books only). On SQLite in
    WAL mode, as three replicas sharing one file need: in its default (rollback journal) mode
    a committing write waits for every open List's read lock and blocks new reads meanwhile,
    so replicas stall (the docs say: replicas share PostgreSQL)."""
    with new_database(tmp_path) as url:
        if url.startswith("sqlite:///"):
            connection = sqlite3.connect(url.removeprefix("sqlite:///"))
            connection.execute("PRAGMA journal_mode=WAL")
            connection.close()
        yield url


@pytest.fixture
def dns_fleet(database):
    first = Replica(database, "127.0.0.1").start()
    replicas = [first]
    try:
        replicas.append(Replica(database, "::1", first.port).start())
        replicas.append(Replica(database, "127.0.0.2", first.port).start())
    except BaseException:
        for replica in replicas:
            replica.stop(timeout=10)
        raise
    dns = MiniDNS("fleet.test", ["127.0.0.1", "127.0.0.2"], ["::1"])
    try:
        yield replicas, f"dns://127.0.0.1:{dns.port}/fleet.test:{first.port}", dns
    finally:
        dns.close()
        for replica in replicas:
            replica.stop(timeout=10)


@pytest.fixture
def ipv4_fleet(database):
    replicas: list[Replica] = []
    try:
        for _ in range(3):
            replicas.append(Replica(database, "127.0.0.1").start())
    except BaseException:
        for replica in replicas:
            replica.stop(timeout=10)
        raise
    try:
        yield replicas, "ipv4:" + ",".join(r.target for r in replicas)
    finally:
        for replica in replicas:
            replica.stop(timeout=10)


def test_dns_name_of_three_replicas_on_127_0_0_1_127_0_0_2_and_ipv6(dns_fleet, database, settings):
    replicas, target, dns = dns_fleet
    # Kill the ::1 replica, drain 127.0.0.2 (each served its share before).
    order = [replicas[1], replicas[2], replicas[0]]
    scale_out(database, settings, order, target)
    assert ("fleet.test", 28) in dns.queries and ("fleet.test", 1) in dns.queries


def test_ipv4_list_of_three_ports(ipv4_fleet, database, settings):
    replicas, target = ipv4_fleet
    scale_out(database, settings, replicas, target)


def test_aregistry_list_resumes_after_its_replica_is_killed(database, settings, monkeypatch):
    """Two Lists through aregistry on a two-replica ipv4: target (round_robin: one on each),
    paused after their first row while one replica is SIGKILLed: both give every row once."""
    import asyncio

    from django_grpc_bus.client.aio import aregistry

    replicas = [Replica(database, "127.0.0.1").start()]
    try:
        replicas.append(Replica(database, "127.0.0.1").start())
        (author,) = insert_authors(database, ["async author"])
        isbns = [f"{979_000_000_0000 + i}" for i in range(ROWS)]
        db_execute(
            database,
            "INSERT INTO catalog_book (title, author_id, isbn) VALUES (%s, %s, %s)",
            [(f"{TITLE} {i}", author, isbn) for i, isbn in enumerate(isbns)],
        )
        target = "ipv4:" + ",".join(r.target for r in replicas)
        add_servlets(
            settings, pair={"target": target, "timeout": CALL_TIMEOUT, "options": SMALL_WINDOW}
        )
        paused = asyncio.Event()
        resumes = []
        real_resume = servlet_module.RPC.resume_request

        def counting_resume(self, *args):
            resumed = real_resume(self, *args)
            resumes.append(resumed is not None)
            return resumed

        monkeypatch.setattr(servlet_module.RPC, "resume_request", counting_resume)

        async def one_list() -> list[str]:
            got = []
            async for row in aregistry.pair.Book.list():
                got.append(row["isbn"])
                if len(got) == 1:
                    await paused.wait()
                    await asyncio.sleep(0.5)  # the kill lands now
            return got

        async def main() -> list[list[str]]:
            await aregistry.pair.Book.retrieve({"isbn": isbns[0]})  # catalog and channel
            lists = [asyncio.create_task(one_list()) for _ in range(2)]
            await asyncio.sleep(0.5)  # both have their first row
            replicas[0].process.send_signal(signal.SIGKILL)
            paused.set()
            try:
                return await asyncio.gather(*lists)
            finally:
                await aregistry.aclose()

        assert asyncio.run(main()) == [isbns, isbns]
        assert resumes == [True]  # the List on the killed replica, resumed once
        assert replicas[0].process.wait(10) == -signal.SIGKILL
    finally:
        for replica in replicas:
            replica.stop(timeout=10)


def test_grpclist_and_registry_connect_take_a_target_and_show_its_addresses(database, settings):
    """`grpclist dns:///localhost:PORT` (and an ipv4: list) connect through the target and say
    first which addresses it resolves to; a malformed target is refused with a sentence."""
    import io

    from django.core.management import CommandError, call_command

    replica = Replica(database, "127.0.0.1").start()
    try:
        for uri, shown in [
            (f"dns:///localhost:{replica.port}", f"127.0.0.1:{replica.port}"),
            (f"ipv4:{replica.target},{replica.target}", f"{replica.target}, {replica.target}"),
        ]:
            out = io.StringIO()
            call_command("grpclist", uri, "Book", "--brief", stdout=out)
            lines = out.getvalue().splitlines()
            assert lines[0].startswith(f"# {uri} resolves to {shown}"), lines[:2]
            assert any("Retrieve" in line for line in lines[1:]), lines
        with pytest.raises(CommandError, match="three slashes"):
            call_command("grpclist", "xds://inventory", stdout=io.StringIO())
        assert registry.connect(f"dns:///localhost:{replica.port}").Book.retrieve is not None
    finally:
        replica.stop(timeout=10)


def test_a_page_cut_mid_stream_is_asked_for_again_and_its_yielded_rows_skipped(
    database, settings, monkeypatch
):
    """Two `list({"page_size": 600})` through registry on a two-replica ipv4: target, paused
    after their first row while one replica is SIGKILLed: a page has no token per batch, so the
    cut one asks for its page again and skips the rows it yielded; both give the page once."""
    replicas = [Replica(database, "127.0.0.1").start()]
    try:
        replicas.append(Replica(database, "127.0.0.1").start())
        (author,) = insert_authors(database, ["page author"])
        isbns = [f"{977_000_000_0000 + i}" for i in range(ROWS)]
        db_execute(
            database,
            "INSERT INTO catalog_book (title, author_id, isbn) VALUES (%s, %s, %s)",
            [(f"{TITLE} {i}", author, isbn) for i, isbn in enumerate(isbns)],
        )
        target = "ipv4:" + ",".join(r.target for r in replicas)
        add_servlets(
            settings, pair={"target": target, "timeout": CALL_TIMEOUT, "options": SMALL_WINDOW}
        )
        resumes: list[bool] = []
        real_resume = servlet_module.RPC.resume_request

        def counting_resume(self, *args):
            resumed = real_resume(self, *args)
            resumes.append(resumed is not None)
            return resumed

        monkeypatch.setattr(servlet_module.RPC, "resume_request", counting_resume)
        registry.pair.Book.retrieve({"isbn": isbns[0]})  # catalog and channel
        lists = [registry.pair.Book.list({"page_size": 600}) for _ in range(2)]
        got = [[next(rows)["isbn"]] for rows in lists]  # both calls started, one on each
        replicas[0].process.send_signal(signal.SIGKILL)
        assert replicas[0].process.wait(10) == -signal.SIGKILL
        for rows, seen in zip(lists, got, strict=True):
            seen += [row["isbn"] for row in rows]
        assert got == [isbns[:600], isbns[:600]]
        assert resumes == [True]
    finally:
        for replica in replicas:
            replica.stop(timeout=10)
