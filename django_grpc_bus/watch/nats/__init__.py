"""Watch past one database: the outbox relayed to NATS JetStream (``WATCH_BACKEND``).

- :mod:`.backend`: the setting, the stream's name and the subject of each model.
- :mod:`.payload`: a message's JSON body and headers (the documented format), and the cursor of
  an event read from the stream.
- :mod:`.bridge`: one NATS connection per process, on its own event loop thread.
- :mod:`.relay`: publishes the outbox's events in commit order, ``Nats-Msg-Id`` = the event id.
- :mod:`.feeds`: the ``Watch`` RPC served from the stream.

nats-py is the ``nats`` extra (``pip install 'django-grpc-bus[nats]'``); nothing here imports it
until the setting asks for NATS.
"""
