"""Named and anonymous volumes on the data disk."""
