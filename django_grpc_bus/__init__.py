"""django-grpc-bus: gRPC microservices from Django models, and a stub-free client to call them."""

__version__ = "2.0.0.dev0"
