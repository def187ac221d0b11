"""Containers as the Engine API sees them: records, options, lifecycle."""
