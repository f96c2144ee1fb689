"""Table options shared by every table with a generated id.

Why: an id is how a user, a script or a log line names a row for ever. SQLite's plain
rowid key hands the largest id out again once the newest row is deleted (purge the
newest batch and the next batch, even another user's, gets its id), so every such
table is ``AUTOINCREMENT`` there. PostgreSQL sequences never go back, so the option
changes nothing on it.
"""

from __future__ import annotations

from typing import Any

NO_ID_REUSE: dict[str, Any] = {"sqlite_autoincrement": True}
