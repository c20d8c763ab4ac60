"""rolebroker: a local ECS container-credentials endpoint for AWS profiles."""

__version__ = "0.1.0"
