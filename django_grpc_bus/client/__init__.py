"""The consumer side: call other projects' gRPC services with no generated stubs.

``registry`` (synchronous) and ``aregistry`` (asyncio) reach every servlet named in
``MESSAGE_BUS['SERVLETS']``; see ``django_grpc_bus.client.registry``.
"""
