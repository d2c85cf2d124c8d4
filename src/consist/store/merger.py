"""``python -m consist.store.merger DB``: merge a DuckDB file's pending runs, then exit.

A tracker that never needed DuckDB (a script that records a run or a hit and
ends) hands the merge to this detached process when it closes, instead of
loading DuckDB itself: the script ends at once, and the DuckDB file is current
for outside readers a moment later (see :meth:`consist.store.duck.DuckStore.merge_later`).
Queries through consist never wait for it: they merge what is pending first.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from .duck import DuckStore
    from .sqlite import SQLiteIndex, index_path_for

    db = Path(argv[0])
    if not index_path_for(db).is_file():  # the workspace was removed meanwhile: create nothing
        return 0
    index = SQLiteIndex(index_path_for(db))
    try:
        DuckStore(db, index).sync()
    finally:
        index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
