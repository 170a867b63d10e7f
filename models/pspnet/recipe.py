"""The PSPNet training recipe: its configuration and presets, its data, the
compiled model and validation (PSPNetRecipe: what the shared run in
models/training/skeleton.py needs from PSPNet), and the built-in demo.

    config = dataclasses.replace(PRESETS["pspnet50_cityscapes_713"], data="/data/cityscapes", out="runs/psp50")
    train_pspnet(config)      # or `python train.py --preset pspnet50_cityscapes_713 --data ...`
"""
import dataclasses
import os

import keras
import tensorflow as tf

import losses
from models.training.recipe import (
    RunSettings, check_choice, check_not_negative, check_out_outside_data, check_positive, setting,
)
from models.training.skeleton import Recipe, train


@dataclasses.dataclass
class PSPNetConfig(RunSettings):
    """Everything that defines a PSPNet training run. Field names are the CLI flags (with - for _)."""

    preset: str = setting("pspnet101_cityscapes_713", "named recipe")
    data: str = setting("", "Cityscapes root (leftImg8bit/, gtFine/), or with --tfds the folder with the zips")
    tfds: bool = setting(False, "read Cityscapes through TensorFlow Datasets (from the official zips in --data)")
    tfds_data_dir: str = setting("", "where TFDS builds its records (default: <data>/tfds)")
    out: str = setting("", "run folder: checkpoints, config.json, history.csv, curves.png (default: runs/<preset>)")
    resume: bool = setting(False, "continue the run in --out from its last saved step, with its saved settings")
    # model
    backbone: str = setting("resnet101", "ResNet depth: resnet18, resnet34, resnet50, resnet101 or resnet152")
    base_width: int = setting(64, "channels of the ResNet's first stage (64 in the paper; small for tests)")
    stem: str = setting("deep", "deep (three 3x3 convolutions, the paper's) or standard (one 7x7)")
    output_stride: int = setting(8, "backbone output stride: 8 (the paper's, dilated), 16 or 32")
    backbone_weights: str = setting("", "imagenet or a Keras Applications weights file (needs --stem standard)")
    init_from: str = setting(
        "", "a .keras PSPNet to fine-tune (a converted semseg / mmsegmentation checkpoint, or an earlier run): its "
        "layout, backbone and widths replace the flags'; only classifiers for another class count start new")
    skip_bad: bool = setting(False, "leave out examples with an unreadable image or label (warned, counted)")
    num_classes: int = setting(19, "classes the model predicts (Cityscapes: 19 train ids)")
    dropout: float = setting(0.1, "dropout before the classifiers")
    # data
    crop: tuple = setting((713, 713), "training crop H,W (one number: square)")
    scale_range: tuple = setting((0.5, 2.0), "random scale range of the augmentation, min,max")
    rotation_degrees: float = setting(10.0, "random rotation of the augmentation, +-degrees")
    blur_prob: float = setting(0.5, "probability of a Gaussian blur in the augmentation")
    batch_size: int = setting(16, "global batch, split over the replicas")
    val_images: int = setting(0, "validate on the first N val images after each epoch (0: all)")
    # schedule (the paper's recipe)
    epochs: int = setting(200, "run length in epochs, when --steps is 0")
    steps: int = setting(0, "the optimizer step at which the run ends (0: --epochs x --steps-per-epoch)")
    steps_per_epoch: int = setting(0, "optimizer steps between validations and checkpoints (0: one pass "
                                      "over the training images)")
    lr: float = setting(0.01, "base learning rate of the poly schedule")
    power: float = setting(0.9, "power of the poly schedule: lr x (1 - step / steps) ** power")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(1e-4, "L2 weight decay on kernels")
    head_lr_multiplier: float = setting(10.0, "learning-rate multiplier of the new layers (pyramid pooling, "
                                              "classifiers)")
    aux_weight: float = setting(0.4, "weight of the auxiliary loss (on the backbone's stage 3)")


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
RESUMABLE = ("val_images", "epochs", "skip_bad", "tfds_data_dir")  # beside models.training.recipe.RESUMABLE


def check_config(config):
    """data.errors.UsageError, one line naming the flag, for a setting no run can use."""
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
    """(steps_per_epoch, total_steps) from epochs/steps/steps_per_epoch and the dataset size."""
    per_epoch = config.steps_per_epoch or max(num_train_images // config.batch_size, 1)
    return per_epoch, config.steps or config.epochs * per_epoch


def learning_rate(config, total_steps):
    """The paper's poly schedule over the run's total_steps."""
    from models.training.optimizer import poly_schedule

    return poly_schedule(config.lr, total_steps, config.power)


def build_compiled_pspnet(config, total_steps, sync_bn):
    """PSPNet with the recipe's optimizer, losses (main + aux_weight * aux) and val mIoU, compiled."""
    from models.pspnet.model import build_pspnet, head_layer_names
    from models.training.optimizer import SegmentationSGD

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
        learning_rate(config, total_steps), momentum=config.momentum, l2=config.weight_decay,
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


class PSPNetRecipe(Recipe):
    """PSPNet's part of the shared run (models/training/skeleton.py): Cityscapes, the poly schedule, val mIoU."""

    monitor, mode = MONITOR, "max"
    resumable = RESUMABLE
    total_settings = ("steps", "epochs")

    def check(self):
        check_config(self.config)

    def read_data(self):
        config = self.config
        self.num_train = count_train_images(config)
        if self.num_train is None:  # TFDS: build it first, then count
            import tensorflow_datasets as tfds

            read_split(config, "train")
            builder = tfds.builder("cityscapes/semantic_segmentation",
                                   data_dir=config.tfds_data_dir or os.path.join(config.data, "tfds"))
            self.num_train = builder.info.splits["train"].num_examples

    def plan(self):
        return steps_plan(self.config, self.num_train)

    def learning_rate(self, total_steps):
        return learning_rate(self.config, total_steps)

    def build_model(self, total_steps, sync_bn):
        return build_compiled_pspnet(self.config, total_steps, sync_bn)

    def train_dataset(self, skip, input_context=None):
        return train_dataset(self.config, self.config.batch_size, input_context).skip(skip)

    def validation(self):
        config = self.config
        return [SegmentationValidation(val_dataset(config), config.num_classes, config.aux_weight)], {}

    def make_replica_step(self, model):
        loss_main, loss_aux, aux_weight = model.loss["main"], model.loss["aux"], self.config.aux_weight

        @tf.function(jit_compile=self.config.jit_compile)
        def replica_step(batch):
            images, labels = batch
            with tf.GradientTape() as tape:
                outputs = model(images, training=True)
                # Each replica's loss is its share of the global mean (losses/distribute.py): the summed
                # gradients are exact.
                loss = loss_main(labels["main"], outputs["main"]) + aux_weight * loss_aux(labels["aux"], outputs["aux"])
            model.optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                                model.trainable_variables))
            return {"loss": loss}

        return replica_step


def train_pspnet(config, strategy=None):
    """Runs (or resumes) one training run until optimizer step --steps; returns the run folder
    (models.training.skeleton.train, which says what it raises)."""
    return train(PSPNetRecipe(config), strategy)


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
