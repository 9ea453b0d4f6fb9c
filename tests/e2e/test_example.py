"""`make demo` on the bundled example: both producers served, the consumer's tour, clean exit."""

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


def test_demo_runs_end_to_end_and_stops_its_servers():
    env = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "run_demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for expected in (
        "inventory (127.0.0.1:",
        "'Kindred' by Octavia E. Butler: 11.25",
        # a filter in Django's spelling, an ordering and a count
        "In stock under 10.00, cheapest first (filter, order_by)\n"
        "  'The Left Hand of Darkness': 8.50 (4 in stock)\n"
        "  'The Dispossessed': 9.99 (12 in stock)\n"
        "  2 of 4 books (inventory.Book.count)\n",
        "price now 7.99; title unchanged: 'The Lathe of Heaven'",
        # one action of each kind
        "restock: 'The Dispossessed' now 17 in stock",
        "low_stock: 'Kindred' (0 in stock)\n  low_stock: 'The Left Hand of Darkness' (4 in stock)",
        "reprice: INVALID_ARGUMENT ([1].price: Ensure this value is greater than or equal to 0.); "
        "#1 still costs 9.99",
        "check_isbn: 9780441478125 found=True 'The Left Hand of Darkness'",
        "check_isbn: 0000000000000 found=False ''",
        "Ada <ada@example.com> (VIP), joined 2024-01-15",
        "published: This field is required.",
        "NOT_FOUND: No catalog.Book with id=999. (from inventory, catalog.Book.Retrieve)",
        "inventory: stopped (exit 0)",
        "accounts: stopped (exit 0)",
    ):
        assert expected in out, expected
    # No server left behind: the pids it printed are gone.
    pids = re.findall(r"serving on 127\.0\.0\.1:\d+ \(pid (\d+)\)", out)
    assert len(pids) == 2, out
    for pid in pids:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"server {pid} is still running")
