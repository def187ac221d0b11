"""The guest agent: the container engine behind the Docker Engine API."""

__version__ = "0.1.0"
