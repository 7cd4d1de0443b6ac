"""WebDataset tar shards (``NNNNN.tar``: members ``key.jpg``/``key.png``... plus ``key.json``/``key.txt``) ->
ImageBytes with image_id ``<shard name>/<key>`` (stable across runs), and the caption/metadata rows.

One element per shard (expanded, then Reshuffled over workers); a shard is read as a stream (``tarfile`` mode
``r|*``, gzip too), holding one sample at a time. A bad member is its own failure row and the shard goes on:
a member over the size limit (not read), a key without an image member, a second image for a key, a key seen
twice; a shard truncated mid-member fails that member and then one row for the rest of the shard.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from core.files import printable_id
from transforms.image_types import IMAGE_EXTENSIONS
from transforms.reading import DEFAULT_MAX_BYTES
from transforms.records import FAILED
from transforms.sources.shards import SampleReader, expand_files, open_input, source_failure
from transforms.spread import ExpandThenRead

TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
CAPTION_EXTENSIONS = (".txt", ".caption")
METADATA_EXTENSIONS = (".json",)
MAX_TEXT_BYTES = 1 << 20  # a caption or metadata member larger than this is a failure row, not kept


def is_webdataset(spec: str) -> bool:
    return spec.lower().rstrip("/").endswith(TAR_EXTENSIONS)


def is_source(spec: str) -> bool:
    """An INPUT read by ``transforms.sources`` (its images are inside it), not listed."""
    from transforms.sources.inline_parquet import is_inline_parquet

    return is_webdataset(spec) or is_inline_parquet(spec)


def split_key(member: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the member path up to the first ``.`` of its base name; the rest the field."""
    directory, base = posixpath.split(member)
    stem, dot, ext = base.partition(".")
    return posixpath.join(directory, stem), (dot + ext).lower()


class _Sample:
    def __init__(self, key: str) -> None:
        self.key = key
        self.image: tuple[str, bytes] | None = None
        self.caption: str | None = None
        self.metadata: str | None = None
        self.members: list[str] = []
        self.duplicate = False  # the key was seen before in this shard: its members are skipped


class ReadShard(SampleReader):
    """(input position, shard uri, shard name) -> ImageBytes (main), caption rows (``captions``), failure rows."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(max_bytes)

    def process(self, element: tuple[int, str, str]) -> Iterator[Any]:
        index, uri, name = element
        seen: set[str] = set()  # keys of this shard: one shard's worth of names, not the corpus's
        sample: _Sample | None = None
        try:
            with open_input(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, field = split_key(member.name)
                    if sample is None or key != sample.key:
                        if sample is not None and not sample.duplicate:
                            yield from self._flush(sample, index, uri, name)
                        if key in seen:
                            yield self._fail(name, key, uri, "duplicate_id",
                                             f"key {key!r} appears again further on in the shard: kept the first")
                            sample = _Sample(key)
                            sample.duplicate = True
                            continue
                        seen.add(key)
                        sample = _Sample(key)
                    if sample.duplicate:
                        continue
                    yield from self._member(tar, member, field, sample, uri, name)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            if sample is not None and not sample.duplicate:
                yield self._fail(name, sample.key, uri, "truncated",
                                 f"the shard broke off while reading this sample: {type(e).__name__}: {e}")
            yield self._fail(name, "", uri, "bad_shard",
                             f"{uri}: unreadable from here on (members after this point are lost): "
                             f"{type(e).__name__}: {e}")
            return
        if sample is not None and not sample.duplicate:
            yield from self._flush(sample, index, uri, name)
        if not seen:
            yield self._fail(name, "", uri, "no_images", f"{uri}: a shard without members")

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, field: str, sample: _Sample,
                uri: str, name: str) -> Iterator[Any]:
        sample.members.append(member.name)
        is_image = field.endswith(IMAGE_EXTENSIONS)
        limit = self.max_bytes if is_image else MAX_TEXT_BYTES
        if not is_image and not field.endswith(CAPTION_EXTENSIONS + METADATA_EXTENSIONS):
            return  # other fields (.cls, .npy ...) are not ours to keep
        if member.size > limit:
            yield self._fail(name, sample.key, uri, "too_large",
                             f"member {printable_id(member.name)} of {member.size} bytes exceeds the "
                             f"{limit}-byte limit (not read)")
            return
        data = tar.extractfile(member).read()
        if len(data) != member.size:
            raise EOFError(f"member {member.name} holds {len(data)} of its {member.size} bytes")
        if is_image:
            if sample.image is not None:
                yield self._fail(name, sample.key, uri, "duplicate_id",
                                 f"a second image member {printable_id(member.name)} for key {sample.key!r}: "
                                 f"kept {printable_id(sample.image[0])}")
            else:
                sample.image = (member.name, data)
        elif field.endswith(CAPTION_EXTENSIONS):
            sample.caption = data.decode("utf-8", "replace")
        else:
            sample.metadata = data.decode("utf-8", "replace")

    def _flush(self, sample: _Sample, index: int, uri: str, name: str) -> Iterator[Any]:
        image_id = printable_id(f"{name}/{sample.key}")
        if sample.image is None:
            if not any(m.lower().endswith(IMAGE_EXTENSIONS) for m in sample.members):
                yield self._fail(name, sample.key, uri, "missing_image",
                                 f"key {sample.key!r} has no image member (members: "
                                 f"{', '.join(printable_id(m) for m in sample.members)})")
            return  # an image member that failed already has its row
        member, data = sample.image
        if not data:
            yield self._fail(name, sample.key, uri, "empty_file", f"member {printable_id(member)}: 0 bytes")
            return
        member_uri = f"{uri}#{printable_id(member)}"
        yield self.accept(image_id, member_uri, data, (index, member_uri))
        if sample.caption is not None or sample.metadata is not None:
            yield beam.pvalue.TaggedOutput("captions", {"image_id": image_id, "uri": member_uri,
                                                        "caption": sample.caption, "metadata": sample.metadata})

    def _fail(self, name: str, key: str, uri: str, kind: str, message: str) -> beam.pvalue.TaggedOutput:
        return self.reject(f"{name}/{key}" if key else name, uri, kind, message)


class ExpandShards(beam.DoFn):
    """(index, spec) -> (index, shard uri, shard name) per shard, or a failure row."""

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        index, spec = element
        try:
            for item in expand_files(spec):
                yield beam.pvalue.TaggedOutput(FAILED, item) if isinstance(item, dict) else (index, *item)
        except Exception as e:  # an unreachable bucket
            yield beam.pvalue.TaggedOutput(FAILED, source_failure(spec, spec, "list_error", f"{type(e).__name__}: {e}"))


class ReadWebDataset(ExpandThenRead):
    """(index, spec) pairs -> {"bytes", "captions", "failed"}, one worker element per shard."""

    def __init__(self, specs: list[tuple[int, str]], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(specs, ExpandShards(), ReadShard(max_bytes), "bytes", ("captions",))
