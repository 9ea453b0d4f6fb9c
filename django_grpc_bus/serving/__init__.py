"""Serving: registered services bound to a ``grpc.Server``, each call run as a Django request.

Nothing is imported here, so that importing one module of the package loads only what it needs.
"""
