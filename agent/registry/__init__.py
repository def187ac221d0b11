"""A client for the Registry HTTP API v2 (the OCI distribution spec): pull and push.

``endpoint`` maps a registry name to where and how to connect (TLS, insecure registries,
the VM's host-loopback alias), ``auth`` reads credentials and ``Www-Authenticate``
challenges, ``client`` speaks HTTP to one repository, ``manifest`` reads manifests and
indexes, and ``pull``/``push`` move images between a registry and the image store with
docker's progress messages.
"""
