"""Training: the LightningModule, the DataModule, callbacks, resume and the distributed gather."""
