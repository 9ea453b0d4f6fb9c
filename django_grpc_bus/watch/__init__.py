"""Watch (SPEC §11): the outbox of committed changes, and the change streams served from it.

- :mod:`.recording`: ``post_save``/``post_delete`` write a ``WatchEvent`` in the same
  transaction as the change; :func:`record_changes` for bulk paths.
- :mod:`.cursor`: the opaque resume position.
- :mod:`.reading`: events after a position, never past a transaction still in flight.
- :mod:`.notifier`: wake-ups (PostgreSQL LISTEN/NOTIFY, polling elsewhere), one per process.
- :mod:`.streams`: the ``Watch`` RPC of a model service, on both servers.
"""

from django_grpc_bus.watch.recording import prune_events, record_changes

__all__ = ["prune_events", "record_changes"]
