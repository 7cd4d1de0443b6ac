"""The config keys of the bottom-up-attention model (``MODEL.BUTD.*``) on detectron2's defaults, and the
loader of a detector YAML."""

from __future__ import annotations

import yaml
from detectron2.config import CfgNode, get_cfg

from encoders.regions.config_files import DetectorConfigError, config_path

_DEPTH_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def add_butd_config(cfg: CfgNode) -> CfgNode:
    """Config keys of the bottom-up-attention model (``MODEL.BUTD.*``)."""
    cfg.MODEL.BUTD = CfgNode()
    # blocks in res2..res5; empty = the table for MODEL.RESNETS.DEPTH
    cfg.MODEL.BUTD.NUM_BLOCKS_PER_STAGE = []
    cfg.MODEL.BUTD.RES5_STRIDE = 1  # 1: res5 runs at the pooled resolution (not halved)
    cfg.MODEL.BUTD.RES5_OUT_CHANNELS = 2048  # the region feature size LightningDOT reads
    cfg.MODEL.BUTD.ATTRIBUTE_ON = True
    cfg.MODEL.BUTD.NUM_ATTRIBUTES = 400  # + 1 "no attribute" output
    cfg.MODEL.BUTD.ATTRIBUTE_EMBED_DIM = 256
    cfg.MODEL.BUTD.ATTRIBUTE_HIDDEN_DIM = 512
    # region selection (see encoders.regions.selection)
    cfg.MODEL.BUTD.NMS_THRESH = 0.3
    cfg.MODEL.BUTD.CONF_THRESH = 0.2
    cfg.MODEL.BUTD.MIN_BOXES = 10
    cfg.MODEL.BUTD.MAX_BOXES = 100
    cfg.MODEL.BUTD.LEGACY_PLUS_ONE = True
    # crops through res5 per chunk (bounds memory; results do not depend on it)
    cfg.MODEL.BUTD.ROI_CHUNK = 512
    return cfg


def load_config(path: str | None, device: str = "cpu") -> CfgNode:
    """A detector YAML (path, or a shipped config's name) on detectron2's defaults plus ours. Loaded with
    ``allow_unsafe=False``, ``_BASE_`` files included: a config file can never run code."""
    cfg = add_butd_config(get_cfg())
    source = config_path(path)
    try:
        cfg.merge_from_file(source, allow_unsafe=False)
    except (OSError, yaml.YAMLError, KeyError, ValueError, AssertionError) as e:  # yacs: KeyError, AssertionError
        raise DetectorConfigError(f"detector config {source}: {type(e).__name__}: {e}") from e
    cfg.MODEL.DEVICE = str(device)
    cfg.freeze()
    return cfg


def blocks_per_stage(cfg: CfgNode) -> list[int]:
    """Blocks in res2..res5: ``MODEL.BUTD.NUM_BLOCKS_PER_STAGE``, or the table for ``MODEL.RESNETS.DEPTH``."""
    blocks = list(cfg.MODEL.BUTD.NUM_BLOCKS_PER_STAGE)
    if blocks:
        if len(blocks) != 4:
            raise ValueError(f"MODEL.BUTD.NUM_BLOCKS_PER_STAGE needs 4 entries, got {blocks}")
        return blocks
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _DEPTH_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH {depth} not supported (bottleneck ResNets: {sorted(_DEPTH_BLOCKS)})")
    return _DEPTH_BLOCKS[depth]
