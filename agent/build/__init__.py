"""The classic Dockerfile builder behind ``POST /build`` (``DOCKER_BUILDKIT=0 docker build``)."""
