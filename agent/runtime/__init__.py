"""The container runtime: namespaces, mounts, cgroups, confinement, processes (Linux only)."""
