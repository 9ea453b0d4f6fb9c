"""The storefront's durable consumer of the producer's books (``runconsumers`` finds it here).

Environment switches for the end-to-end tests: ``STOREFRONT_HANG_ON_BOOK`` (a book id) makes
the handler write its row, touch ``STOREFRONT_HANG_FILE`` and then wait, uncommitted,
``STOREFRONT_HANG_SECONDS`` (600) for the test to kill or stop the process;
``STOREFRONT_FAIL_ON_BOOK`` makes it write its row and then raise for that book, the first
``STOREFRONT_FAILURES`` times (counted in ``STOREFRONT_FAIL_FILE``).
"""

import os
import time
from pathlib import Path

from django_grpc_bus.consumer import subscribe
from storefront.models import Seen


@subscribe("library", os.environ.get("STOREFRONT_MODEL", "fakebus.Book"), snapshot=True)
def book_changed(event):
    if event["type"] == "SNAPSHOT_COMPLETE":
        return
    book_id = event["data"]["id"]
    Seen.objects.create(
        event_id=event["id"] or f"snapshot-{book_id}",
        book_id=book_id,
        kind=event["type"],
        title=event["data"].get("title", ""),
    )
    if os.environ.get("STOREFRONT_HANG_ON_BOOK") == str(book_id):
        Path(os.environ["STOREFRONT_HANG_FILE"]).write_text(event["cursor"])
        time.sleep(float(os.environ.get("STOREFRONT_HANG_SECONDS", "600")))
    if os.environ.get("STOREFRONT_FAIL_ON_BOOK") == str(book_id):
        counter = Path(os.environ["STOREFRONT_FAIL_FILE"])
        failures = int(counter.read_text() or 0) if counter.exists() else 0
        if failures < int(os.environ.get("STOREFRONT_FAILURES", "2")):
            counter.write_text(str(failures + 1))
            raise RuntimeError(f"simulated failure {failures + 1} on book {book_id}")


if os.environ.get("STOREFRONT_BAD_SUBSCRIPTION"):
    # "servlet,model": a subscription that cannot run, for runconsumers' errors.
    servlet, model = os.environ["STOREFRONT_BAD_SUBSCRIPTION"].split(",")

    @subscribe(servlet, model, name="bad")
    def bad(event):
        raise AssertionError("never called")
