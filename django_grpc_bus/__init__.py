"""django-grpc-bus: gRPC microservices from Django models, and a stub-free client to call them."""

__version__ = "0.1.0"
