"""The queue seam: arq on Redis or the in-process runner, plus progress pub/sub."""
