"""A build that fails leaves no incomplete version behind; a complete (or live) one is never removed."""

from __future__ import annotations

import pytest

from index import layout, storage
from index.discard import discard_incomplete_version


def test_failed_build_removes_its_incomplete_version(tmp_path):
    root = str(tmp_path / "index")
    version = layout.new_version_name()
    with pytest.raises(RuntimeError, match="pipeline failed"), discard_incomplete_version(root, version):
        storage.write_text(storage.join(layout.version_dir(root, version), "trained.index"), "partial")
        raise RuntimeError("pipeline failed")
    assert layout.list_versions(root) == []


def test_complete_or_live_versions_are_kept(tmp_path):
    root = str(tmp_path / "index")
    built = layout.new_version_name()
    with pytest.raises(ValueError), discard_incomplete_version(root, built):
        layout.write_manifest(root, built, {"version": built})  # complete (e.g. below the recall floor)
        raise ValueError("recall below the floor")
    live = layout.new_version_name()
    layout.write_manifest(root, live, {"version": live})
    layout.publish(root, live)
    with pytest.raises(ValueError), discard_incomplete_version(root, live):
        storage.rm(layout.manifest_url(root, live))
        raise ValueError("never delete what is live")
    assert layout.list_versions(root) == sorted([built, live])
