"""``python -m app.cli`` runs the ``batchd`` command."""

from app.cli import main

main()
