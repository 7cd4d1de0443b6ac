"""A record of a feature file that cannot be used costs only itself.

The tolerant readers (``iter_*``) yield a :class:`BadRecord` in its place and go on; the strict ones
(``read_*``) raise at the first. A feature file can also name an image twice (a TSV or a regions table
concatenated twice): :func:`first_per_id` keeps the first record, as the image path does, and makes every
later one a ``duplicate_id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from encoders.regions.types import Regions

BAD_RECORD = "bad_record"
DUPLICATE_ID = "duplicate_id"


@dataclass(frozen=True)
class BadRecord:
    """``image_id``: the record's id where it could be read, else ``<file>:<position>``; ``error``: the failure
    row's kind; ``message``: what is wrong and where (file and line, key or row)."""

    image_id: str
    error: str
    message: str


RegionItem = tuple[str, Regions] | BadRecord


def first_per_id(items: Iterable[RegionItem], source: str) -> Iterator[RegionItem]:
    """Pass records through once per image_id; a later record of an id already seen becomes a ``duplicate_id``.
    (The set of ids read so far is the memory this costs: one string per image.)"""
    seen: dict[str, int] = {}
    for position, item in enumerate(items, start=1):
        if isinstance(item, BadRecord):
            yield item
            continue
        first = seen.setdefault(item[0], position)
        if first == position:
            yield item
        else:
            yield BadRecord(item[0], DUPLICATE_ID, f"{source}: record {position} repeats image_id {item[0]!r} of "
                                                   f"record {first}; the first is kept")


def strict(items: Iterable[RegionItem]) -> Iterator[tuple[str, Regions]]:
    """The records, raising ``ValueError`` (with the record's message) at the first bad one."""
    for item in items:
        if isinstance(item, BadRecord):
            raise ValueError(item.message)
        yield item
