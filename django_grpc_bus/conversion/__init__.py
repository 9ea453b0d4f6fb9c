"""Values between Django, Python and protobuf: the one place each conversion is written.

- ``fieldtypes``: model field -> proto type and the kind of value it carries (the type map);
  the generator writes ``.proto`` files from it, the serializer picks its fast writers by kind.
- ``scalars``: Python values -> proto scalars (numbers, bytes, canonical text; file names).
- ``wellknown``: Python values <-> the well-known message types (Timestamp, Duration,
  Value/Struct/ListValue, FieldMask, wrappers, Empty).
- ``messages``: dicts <-> messages, planned from descriptors alone, so the client (which has no
  models) converts exactly as the server does.

This package imports only Django, protobuf and the standard library.
"""
