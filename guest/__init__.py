"""Guest root files: init, boot steps and config copied into the VM image."""
