"""Errors raised by the index package; each names what went wrong and where."""

from __future__ import annotations

from core.errors import LdotError, RecallGuardError, UsageError


class IndexError_(LdotError):
    """Base class (named with a trailing underscore so it does not shadow the builtin ``IndexError``)."""


class EmbeddingsError(IndexError_, UsageError):
    """The embedding tables are missing, malformed, or inconsistent (dims, columns, null vectors)."""


class ModelMismatchError(EmbeddingsError):
    """Rows of one build carry more than one model fingerprint."""


class IdCollisionError(IndexError_):
    """Two different ``image_id`` values hash to the same 63-bit FAISS id."""


class DuplicateImageIdError(IndexError_, UsageError):
    """The same ``image_id`` appears in more than one row."""


class SettingsError(IndexError_, UsageError):
    """A build setting is out of range or malformed (shards, memory budget, recall targets, ...)."""


class FactoryError(IndexError_, UsageError):
    """No factory fits the request (memory budget too small, unsupported factory string, ...)."""


class IndexIntegrityError(IndexError_):
    """A published file is missing, has the wrong checksum, or does not match its manifest."""


class NoLiveVersionError(IndexIntegrityError):
    """``ROOT/CURRENT`` does not exist (nothing published yet) or names a version that is not there."""


class RecallBelowFloorError(IndexError_, RecallGuardError):
    """The recall self-check of a freshly built version is below the requested floor; it was not published."""

    def __init__(self, message: str, version: str = "", manifest: dict | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.manifest = manifest or {}
