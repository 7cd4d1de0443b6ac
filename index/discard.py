"""An index version that a failed build leaves behind is removed (``pipeline.build_index_job.build_index`` runs
in this, so ``ldot build-index`` and the nightly job both get it), with the one deletion rule
(``index.layout.delete_version``).

A version without its manifest is never read or published, but it holds partial shards and staging files; a
build that raises (pipeline failure, a missing or wrong ``_done``, I/O error, id collision) deletes it. A version
whose manifest is written (e.g. built but below the recall floor) is complete and kept.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from index import layout, storage

log = logging.getLogger(__name__)


@contextlib.contextmanager
def discard_incomplete_version(root: str, version: str) -> Iterator[None]:
    """Run a build of ``root``/versions/``version``; if it raises, delete that version unless it is complete or
    live, then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the storage that broke the build may break this too: keep its error
            if storage.exists(layout.version_dir(root, version)) and not layout.is_complete(root, version):
                layout.delete_version(root, version)  # refuses the live one
                log.warning("removed the incomplete version %s of %s left by the failed build", version, root)
        raise
