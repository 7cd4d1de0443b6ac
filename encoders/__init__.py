"""Models: the LightningDOT towers (``encoders.lightningdot``) and region-feature extraction (``encoders.regions``)."""
