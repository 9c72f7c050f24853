"""The parameter lists (``key=value`` overrides of params.yaml) that make a test's run small."""

# small but real settings: the code paths of a full run at a fraction of the cost
FAST_PARAMS = [
    "data.image_size=16",
    "mine.val_pairs=200",
    "mine.test_pairs=300",
    "mine.train_pairs=200",
    "model.channels=8",
    "model.embedding_dim=16",
    "train.identities_per_batch=4",
    "train.images_per_identity=4",
    "train.batches_per_epoch=4",
    "train.max_epochs=2",
]


# on top of FAST_PARAMS, for the 8 x 5 real faces of `small_faces`: few enough pairs to exist
FACES_PARAMS = [
    "data.image_size=24",
    "mine.val_pairs=20",
    "mine.test_pairs=20",
    "mine.train_pairs=20",
    "train.images_per_identity=3",
    "train.identities_per_batch=3",
]

# on top of FAST_PARAMS, for tests of what happens around training (registry, servers): one
# epoch and none of the evaluation extras
QUICK = [
    "train.max_epochs=1",
    "calibrate.bootstrap_resamples=0",
    "evaluate.bootstrap_resamples=0",
    "evaluate.kfold=0",
    "evaluate.oneshot_episodes=0",
    "evaluate.retrieval=false",
    # the ONNX export (a few seconds per registration) is tested where it is the subject
    # (tests/test_onnx.py) and by every run without QUICK
    "serve.export_onnx=false",
]


# on top of QUICK: a training long enough (4 epochs of 40 batches at 28 px) for a test to
# interrupt it between its first checkpoint and its end
INTERRUPTIBLE_EPOCHS, INTERRUPTIBLE_BATCHES = 4, 40
INTERRUPTIBLE = [
    f"train.max_epochs={INTERRUPTIBLE_EPOCHS}",
    f"train.batches_per_epoch={INTERRUPTIBLE_BATCHES}",
    "train.monitor=last",
    "data.image_size=28",
    "model.channels=16",
]
