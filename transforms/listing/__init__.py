"""List inputs (directories, globs, files, fsspec URLs, manifests) into ``ImageRef``s; keep one per image_id.

Listing runs inside the pipeline (one input spec per element, big directories fanned out over workers), so a
corpus of millions of objects is listed by workers rather than embedded in the job graph. Nothing is lost
silently: a directory that cannot be listed, a bad manifest row, an INPUT that yields no image are each a
failure row, and the other inputs go on.

Modules: ``common`` (the rows listing yields), ``walk`` (the hostile-input-safe directory walk), ``expand``
(one INPUT in one element), ``fanout`` (a directory INPUT split over workers), ``manifests`` (CSV/JSONL/Parquet
rows), ``stages`` (the Beam transforms).
"""

from transforms.listing.common import MANIFEST_EXTENSIONS, Listed, ListError, info_stamp
from transforms.listing.expand import expand_input, is_manifest
from transforms.listing.fanout import FANOUT, Prefix, list_prefix, split_input
from transforms.listing.manifests import MAX_MANIFEST_LINE, SPLIT_BYTES, read_manifest, read_part, split_manifest
from transforms.listing.stages import ExpandInputs, ListImages, ListPart, ReportEmptyInputs

__all__ = [
           "FANOUT",
           "MANIFEST_EXTENSIONS",
           "MAX_MANIFEST_LINE",
           "SPLIT_BYTES",
           "ExpandInputs",
           "ListError",
           "ListImages",
           "ListPart",
           "Listed",
           "Prefix",
           "ReportEmptyInputs",
           "expand_input",
           "info_stamp",
           "is_manifest",
           "list_prefix",
           "read_manifest",
           "read_part",
           "split_input",
           "split_manifest",
]
