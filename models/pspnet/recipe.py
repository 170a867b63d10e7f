"""The PSPNet training recipe: its configuration and presets, its data, the
compiled model and the run (Keras fit; models/training/custom_loop.py under
MultiWorkerMirroredStrategy), and the built-in demo.

    config = dataclasses.replace(PRESETS["pspnet50_cityscapes_713"], data="/data/cityscapes", out="runs/psp50")
    train_pspnet(config)      # or `python train.py --preset pspnet50_cityscapes_713 --data ...`
"""
import dataclasses
import os

import keras
import tensorflow as tf

import losses
from models.training.recipe import (
    RunSettings, check_choice, check_not_negative, check_out_outside_data, check_positive, start_run,
)


@dataclasses.dataclass
class PSPNetConfig(RunSettings):
    """Everything that defines a PSPNet training run. Field names are the CLI flags (with - for _)."""

    preset: str = "pspnet101_cityscapes_713"
    data: str = ""  # Cityscapes root (leftImg8bit/, gtFine/), or with tfds=True the folder with the zips
    tfds: bool = False
    tfds_data_dir: str = ""  # where TFDS builds its records (default: <data>/tfds)
    out: str = ""  # run folder (default runs/<preset>)
    resume: bool = False
    # model
    backbone: str = "resnet101"
    base_width: int = 64
    stem: str = "deep"
    output_stride: int = 8
    backbone_weights: str = ""  # "", "imagenet" or a Keras Applications weights file (needs stem="standard")
    # A .keras PSPNet (a converted semseg / mmsegmentation checkpoint, or an earlier run) to fine-tune: its
    # layout, backbone and widths replace the ones above; only classifiers for another class count start new.
    init_from: str = ""
    skip_bad: bool = False  # leave out Cityscapes examples with an unreadable image or label (warned, counted)
    num_classes: int = 19
    dropout: float = 0.1
    # data
    crop: tuple = (713, 713)
    scale_range: tuple = (0.5, 2.0)
    rotation_degrees: float = 10.0
    blur_prob: float = 0.5
    batch_size: int = 16  # global batch, split over replicas
    val_images: int = 0  # validate on the first N val images each epoch (0 = all)
    # schedule (the paper's recipe)
    epochs: int = 200
    steps: int = 0  # total optimizer steps; if set, overrides epochs
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    lr: float = 0.01
    power: float = 0.9
    momentum: float = 0.9
    weight_decay: float = 1e-4
    head_lr_multiplier: float = 10.0
    aux_weight: float = 0.4


PRESETS = {
    # PSPNet paper / semseg reference on Cityscapes fine: 713 crops, batch 16, poly 0.9 from 0.01, 200 epochs.
    "pspnet101_cityscapes_713": PSPNetConfig(preset="pspnet101_cityscapes_713"),
    "pspnet50_cityscapes_713": PSPNetConfig(preset="pspnet50_cityscapes_713", backbone="resnet50"),
    # Built-in demo: a ResNet-18 PSPNet on the generated sample, a few CPU minutes.
    "pspnet_demo": PSPNetConfig(
        preset="pspnet_demo", data="samples/cityscapes", out="runs/pspnet_demo", resume=True,
        backbone="resnet18", base_width=32, crop=(256, 256), scale_range=(0.75, 1.5), batch_size=8,
        epochs=12, steps_per_epoch=25, lr=0.02, head_lr_multiplier=10.0, weight_decay=1e-4),
}
DEMO_PRESET = "pspnet_demo"
CONFIG = PSPNetConfig  # what train.py builds the flags from
MONITOR = "val_main_miou"  # the metric that picks best.keras


def check_config(config):
    """One-line SystemExit naming the flag for a setting no run can use."""
    from models.pspnet.model import BACKBONES

    check_positive(config, ("batch_size", "crop", "scale_range", "epochs", "base_width", "num_classes"))
    check_not_negative(config, ("steps", "steps_per_epoch", "save_every", "val_images", "keep_checkpoints"))
    check_choice(config, "backbone", sorted(BACKBONES))
    check_choice(config, "stem", ("deep", "standard"))
    check_choice(config, "output_stride", (8, 16, 32))
    if config.init_from:
        from data import cli

        if not os.path.isfile(config.init_from):
            raise cli.UsageError(f"--init-from {config.init_from}: no such file (a .keras PSPNet)")
        if config.backbone_weights:
            raise cli.UsageError("--init-from and --backbone-weights: give one (--init-from holds the backbone)")
    check_out_outside_data(config)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def count_train_images(config):
    if config.tfds:
        return None  # known after TFDS has built the dataset
    from data import cityscapes

    return len(cityscapes.find_examples(config.data, "train", skip_bad=config.skip_bad, skipped=[]))


def read_split(config, split, *, shuffle=False, input_context=None):
    """Decoded Cityscapes elements of one split, from the folders or from TFDS."""
    from data import cityscapes

    if config.tfds:
        data_dir = config.tfds_data_dir or os.path.join(config.data, "tfds")
        return cityscapes.read_tfds(split, data_dir=data_dir, manual_dir=config.data, shuffle=shuffle,
                                    seed=config.seed, input_context=input_context)
    skipped = []
    dataset = cityscapes.read_folder(config.data, split, shuffle=shuffle, seed=config.seed,
                                     input_context=input_context, skip_bad=config.skip_bad, skipped=skipped)
    if skipped:
        from data import cli

        cli.warn(f"{split}: skipped {len(skipped)} example(s) with an unreadable image or label (--skip-bad)")
    return dataset


def train_dataset(config, global_batch, input_context=None):
    """Repeated training batches (image, {"main": label, "aux": label})."""
    from data import cityscapes

    batch = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
    seed = config.seed + (input_context.input_pipeline_id if input_context else 0)
    # Repeat before batching: batches then span epoch boundaries and never come up short.
    dataset = cityscapes.train_pipeline(
        read_split(config, "train", shuffle=True, input_context=input_context).repeat(),
        batch_size=batch, crop_size=config.crop, scale_range=config.scale_range,
        rotation_degrees=config.rotation_degrees, blur_prob=config.blur_prob, seed=seed)
    return dataset.map(lambda image, label: (image, {"main": label, "aux": label}))


def val_dataset(config):
    """Full-size validation images and trainId labels (image [1, H, W, 3], label [1, H, W])."""
    from data import cityscapes

    dataset = cityscapes.eval_pipeline(read_split(config, "val"), batch_size=1)
    if config.val_images:
        dataset = dataset.take(config.val_images)
    return dataset.map(lambda e: (e["image"], e["label"]))


class SegmentationValidation(keras.callbacks.Callback):
    """Scores full validation images after each epoch; adds val_loss and val_main_miou to the epoch logs.

    Runs outside the replicas (one device), so images of any size and any
    count work under every strategy (Keras's own validation splits each
    batch over the replicas and fails on a batch smaller than their number).
    Must come before the callbacks that read these logs.
    """

    def __init__(self, dataset, num_classes, aux_weight):
        super().__init__()
        self.dataset = dataset
        self.num_classes = num_classes
        self.aux_weight = aux_weight
        self._predict = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or self.model.stop_training:  # a stopped epoch is neither complete nor saved
            return
        if self._predict is None:  # one compiled function for the whole run (any image size)
            self._predict = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        miou = keras.metrics.MeanIoU(self.num_classes, ignore_class=255, sparse_y_pred=False)
        total, count = 0.0, 0
        for images, labels in self.dataset:
            outputs = self._predict(images)
            miou.update_state(labels, outputs["main"])
            total += float(losses.pspnet_loss(labels, outputs["main"], outputs["aux"], self.num_classes,
                                              aux_weight=self.aux_weight))
            count += 1
        logs["val_loss"] = total / max(count, 1)
        logs[MONITOR] = float(miou.result())
        print(f" - val_loss: {logs['val_loss']:.4f} - {MONITOR}: {logs[MONITOR]:.4f}", flush=True)


# ----------------------------------------------------------------------------
# Model and run
# ----------------------------------------------------------------------------

def steps_plan(config, num_train_images):
    """(epochs, steps_per_epoch, total_steps) from epochs/steps/steps_per_epoch and the dataset size."""
    per_epoch = config.steps_per_epoch or max(num_train_images // config.batch_size, 1)
    if config.steps:
        epochs = -(-config.steps // per_epoch)
        return epochs, per_epoch, config.steps
    return config.epochs, per_epoch, config.epochs * per_epoch


def build_compiled_pspnet(config, total_steps, sync_bn):
    """PSPNet with the recipe's optimizer, losses (main + aux_weight * aux) and val mIoU, compiled."""
    from models.pspnet.model import build_pspnet, head_layer_names
    from models.training.optimizer import SegmentationSGD, poly_schedule

    if config.init_from:
        from models.checkpoints import CheckpointError
        from models.pspnet.fine_tuning import build_from

        try:
            model, fresh = build_from(config.init_from, num_classes=config.num_classes, aux=True,
                                      dropout=config.dropout, sync_bn=sync_bn)
        except (ValueError, OSError) as error:
            raise CheckpointError(f"--init-from {config.init_from}: {str(error).splitlines()[0]}") from None
        print(f"initialised from {config.init_from}" + (f"; new: {', '.join(fresh)}" if fresh else ""))
    else:
        model = build_pspnet(
            config.num_classes, backbone=config.backbone, aux=True, stem=config.stem,
            output_stride=config.output_stride, base_width=config.base_width, dropout=config.dropout,
            sync_bn=sync_bn, backbone_weights=config.backbone_weights or None)
    optimizer = SegmentationSGD(
        poly_schedule(config.lr, total_steps, config.power), momentum=config.momentum, l2=config.weight_decay,
        head_layers=head_layer_names(model), head_lr_multiplier=config.head_lr_multiplier)
    loss = losses.PixelwiseSoftmaxCrossEntropy(config.num_classes)
    model.compile(
        optimizer=optimizer,
        loss={"main": loss, "aux": losses.PixelwiseSoftmaxCrossEntropy(config.num_classes)},
        loss_weights={"main": 1.0, "aux": config.aux_weight},
        metrics={"main": [keras.metrics.MeanIoU(config.num_classes, ignore_class=255, sparse_y_pred=False,
                                                name="miou")]},
        jit_compile=config.jit_compile)
    return model


def train_pspnet(config, strategy=None):
    """Runs (or resumes) one training run; returns the run folder.

    strategy: a tf.distribute strategy; None builds the one --strategy names.
    A resumed run continues from the saved step with the data order of an
    uninterrupted run. Raises SystemExit with a one-line message on a
    non-finite loss or a failed save (the last good checkpoint stays as it
    was), and after a stop signal (once saved).
    """
    from models.training.run_state import load_run_model
    from models.training.callbacks import fit_from_step, standard_callbacks

    check_config(config)
    strategy, state = start_run(config, strategy)

    num_train = count_train_images(config)
    if num_train is None:  # TFDS: build it first, then count
        import tensorflow_datasets as tfds

        read_split(config, "train")
        builder = tfds.builder("cityscapes/semantic_segmentation",
                               data_dir=config.tfds_data_dir or os.path.join(config.data, "tfds"))
        num_train = builder.info.splits["train"].num_examples
    epochs, steps_per_epoch, total_steps = steps_plan(config, num_train)
    sync_bn = strategy.num_replicas_in_sync > 1

    if config.strategy == "multiworker":
        return train_multiworker(config, strategy, state, epochs, steps_per_epoch, total_steps)

    start_step = state["steps_done"] if state else 0
    with strategy.scope():
        if state:
            model = load_run_model(config.out, state)
            model.jit_compile = config.jit_compile
        else:
            model = build_compiled_pspnet(config, total_steps, sync_bn)
    print(f"training {config.preset}: {epochs} epochs x {steps_per_epoch} steps (batch {config.batch_size}, "
          f"{strategy.num_replicas_in_sync} replica(s)); starting at epoch {start_step // steps_per_epoch + 1} "
          f"(step {start_step}); run folder {config.out}")
    callbacks, _ = standard_callbacks(config.out, monitor=MONITOR, keep=config.keep_checkpoints,
                                      initial_state=state, save_every=config.save_every)
    validation = SegmentationValidation(val_dataset(config), config.num_classes, config.aux_weight)
    fit_from_step(model, lambda skip: train_dataset(config, config.batch_size).skip(skip), start_step=start_step,
                  steps_per_epoch=steps_per_epoch, epochs=epochs, callbacks=[validation] + callbacks,
                  verbose=config.verbose)
    return config.out


def train_multiworker(config, strategy, state, epochs, steps_per_epoch, total_steps):
    """train_pspnet under MultiWorkerMirroredStrategy: models/training/custom_loop.py with PSPNet's step."""
    from models.training.custom_loop import train_with_strategy_run

    def make_replica_step(model):
        loss_main, loss_aux = model.loss["main"], model.loss["aux"]

        @tf.function(jit_compile=config.jit_compile)
        def replica_step(batch):
            images, labels = batch
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                # Each replica's loss is its share of the global mean (losses/distribute.py): the summed
                # gradients are exact.
                loss = (loss_main(labels["main"], outputs["main"])
                        + config.aux_weight * loss_aux(labels["aux"], outputs["aux"]))
            model.optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                                model.trainable_variables))
            return {"loss": loss}

        return replica_step

    return train_with_strategy_run(
        config, strategy, state, epochs=epochs, steps_per_epoch=steps_per_epoch,
        build_model=lambda: build_compiled_pspnet(config, total_steps, sync_bn=strategy.num_replicas_in_sync > 1),
        make_replica_step=make_replica_step,
        dataset_fn=lambda ctx, start_step: train_dataset(config, config.batch_size, ctx).skip(start_step))


def run_demo(config):
    """`make demo`: sample data (generated once), train, evaluate, predict; prints where everything is."""
    from data import images, samples
    from models.pspnet.evaluation import evaluate_on_cityscapes
    from models.pspnet.inference import load_inference_model
    from models.pspnet.prediction import predict_files

    if not os.path.isdir(os.path.join(config.data, "leftImg8bit")):
        samples.main(["cityscapes", config.data])  # the built-in sample, at its default size
    run_dir = train_pspnet(config)
    checkpoint = os.path.join(run_dir, "best.keras")
    eval_dir = os.path.join(run_dir, "eval")
    metrics = evaluate_on_cityscapes(checkpoint, config.data, eval_dir, split="val")  # replaces the demo's own outputs
    predict_dir = os.path.join(run_dir, "predict")
    val_images = images.find_images([os.path.join(config.data, "leftImg8bit", "val")])
    predict_files(load_inference_model(checkpoint), val_images, predict_dir, overwrite=True)
    print("\ndemo finished:")
    print(f"  val mIoU            {metrics['mIoU']:.4f}")
    print(f"  checkpoints, curves {run_dir}/ (best.keras, curves.png, history.csv)")
    print(f"  evaluation          {eval_dir}/ (metrics.json, *_pred_labelIds.png, confusion_matrix.png)")
    print(f"  colour overlays     {predict_dir}/")
    return metrics


def run(config):
    """What `python train.py --model pspnet` does with a resolved config: the demo, or one training run."""
    return run_demo(config) if config.preset == DEMO_PRESET else train_pspnet(config)
