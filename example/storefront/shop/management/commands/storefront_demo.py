"""A tour of the two producers, through the registry only: no stubs, no .proto files here."""

from django.core.management.base import BaseCommand
from django_grpc_bus.client.exceptions import CallError
from django_grpc_bus.client.registry import registry


class Command(BaseCommand):
    help = "List, retrieve, create, update and delete books; show what errors look like."

    def handle(self, *args, **options):
        inventory, accounts = registry.inventory, registry.accounts
        say = self.stdout.write

        say(self.style.MIGRATE_HEADING("Services found through reflection"))
        for servlet in (inventory, accounts):
            say(f"  {servlet.name} ({servlet.config.address}): {', '.join(servlet.services)}")

        say(self.style.MIGRATE_HEADING("Books in stock (inventory.Book.list, streamed)"))
        for book in inventory.Book.list():  # each with its author nested (author_detail)
            say(
                f"  #{book['id']} {book['title']!r} by {book['author_detail']['name']}: "
                f"{book['price']} ({book['in_stock']} in stock, published {book['published']})"
            )

        say(self.style.MIGRATE_HEADING("In stock under 10.00, cheapest first (filter, order_by)"))
        query = {"filter": {"price__lt": "10.00", "in_stock__gt": 0}, "order_by": ["price"]}
        for book in inventory.Book.list(query):
            say(f"  {book['title']!r}: {book['price']} ({book['in_stock']} in stock)")
        matching, total = inventory.Book.count(query), inventory.Book.count()
        say(f"  {matching} of {total} books (inventory.Book.count)")

        say(self.style.MIGRATE_HEADING("One book (inventory.Book.retrieve)"))
        book = inventory.Book.retrieve({"id": 1})
        say(f"  {book}")

        say(self.style.MIGRATE_HEADING("Create, partially update, delete"))
        created = inventory.Book.create(
            {
                "title": "The Lathe of Heaven",
                "author": 1,
                "isbn": "9781416556961",
                "price": "10.40",
                "published": "1971-01-01",
                "details": {"pages": 184, "tags": ["dreams", "portland"]},
            }
        )
        say(f"  created #{created['id']}: price {created['price']}, details {created['details']}")
        updated = inventory.Book.partial_update(
            {"data": {"id": created["id"], "price": "7.99"}, "update_mask": ["price"]}
        )
        say(f"  price now {updated['price']}; title unchanged: {updated['title']!r}")
        inventory.Book.destroy({"id": created["id"]})
        say(f"  deleted #{created['id']}")

        say(self.style.MIGRATE_HEADING("Actions, one of each kind (inventory.Book.<action>)"))
        restocked = inventory.Book.restock({"id": 1, "count": 5})  # unary
        say(f"  restock: {restocked['title']!r} now {restocked['in_stock']} in stock")
        for row in inventory.Book.low_stock({"below": 5}):  # server-streaming
            say(f"  low_stock: {row['title']!r} ({row['in_stock']} in stock)")
        prices = [{"id": 1, "price": "11.00"}, {"id": 2, "price": "-1"}]
        try:  # client-streaming, atomic: the second row is invalid, so neither changes
            inventory.Book.reprice(iter(prices))
        except CallError as exc:
            violations = "; ".join(f"{field}: {problem}" for field, problem in exc.violations)
            price = inventory.Book.retrieve({"id": 1})["price"]
            say(f"  reprice: {exc.code().name} ({violations}); #1 still costs {price}")
        isbns = ({"isbn": isbn} for isbn in ("9780441478125", "0000000000000"))
        for answer in inventory.Book.check_isbn(isbns):  # bidi-streaming
            say(f"  check_isbn: {answer['isbn']} found={answer['found']} {answer['title']!r}")

        say(self.style.MIGRATE_HEADING("Customers (accounts.Customer.list)"))
        for customer in accounts.Customer.list():
            vip = " (VIP)" if customer["vip"] else ""
            joined = f"{customer['joined']:%Y-%m-%d}"
            say(f"  {customer['name']} <{customer['email']}>{vip}, joined {joined}")

        say(self.style.MIGRATE_HEADING("What a validation error looks like"))
        try:
            inventory.Book.create({"title": "", "author": 1, "isbn": "1", "price": "abc"})
        except CallError as exc:
            say(f"  {exc.code().name}: {exc.details()}")
            for field, problem in exc.violations:
                say(f"    {field}: {problem}")

        say(self.style.MIGRATE_HEADING("What NOT_FOUND looks like"))
        try:
            inventory.Book.retrieve({"id": 999})
        except CallError as exc:
            say(f"  {exc.code().name}: {exc.details()} (from {exc.servlet}, {exc.method})")
        say(self.style.SUCCESS("Done."))
