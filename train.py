"""Train PSPNet on Cityscapes (and, with --model mask_rcnn, the Mask R-CNN mask head on COCO).

    python train.py                      # the demo: sample data, small PSPNet, CPU, a few minutes
    python train.py --preset pspnet101_cityscapes_713 --data /data/cityscapes --out runs/psp101
    python train.py --preset pspnet101_cityscapes_713 --data /data/zips --tfds --strategy mirrored
    python train.py --help

A preset fixes every setting of a published recipe; flags override single
settings. The resolved configuration is printed and saved as config.json in the
run folder beside the checkpoints (see models/training.py for the folder
layout). An interrupted run continues with --resume (the demo resumes by itself).
"""
import argparse
import dataclasses
import json
import os
import sys

# Before TensorFlow is imported (it reads these once): quiet C++ logging.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels on (TensorFlow enables them only on some CPUs): 1.5x faster PSPNet training
# steps here, see BENCHMARKS.md. TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@dataclasses.dataclass
class PSPNetConfig:
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
    # runtime
    strategy: str = "none"  # none | mirrored | multiworker
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 2
    seed: int = 0
    verbose: int = 1


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


@dataclasses.dataclass
class MaskHeadConfig:
    """A Mask R-CNN mask-head training run (--model mask_rcnn --stage mask_head): class and mask branches
    on a ResNet-FPN, trained on RoIs sampled around the ground-truth boxes (no RPN yet)."""

    preset: str = "maskrcnn_r50_fpn_mask_head_coco"
    stage: str = "mask_head"
    data: str = ""  # COCO root: annotations/instances_{train,val}2017.json, {train,val}2017/
    out: str = ""
    resume: bool = False
    # model
    depth: int = 50
    base_width: int = 64
    fpn_channels: int = 256
    head_channels: int = 256
    fc_units: int = 1024
    freeze_backbone: bool = False
    # data
    short_side: int = 800
    long_side: int = 1333
    batch_size: int = 16
    num_rois: int = 512  # sampled RoIs per image (the paper's 512, a quarter positive)
    positive_fraction: float = 0.25
    skip_empty_images: bool = False
    # schedule: Detectron's 1x (90k steps at batch 16, x0.1 at 60k and 80k, linear warm-up)
    steps: int = 90000
    steps_per_epoch: int = 5000
    lr: float = 0.02
    milestones: tuple = (60000, 80000)
    warmup_steps: int = 1000
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # runtime
    strategy: str = "none"
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 2
    seed: int = 0
    verbose: int = 1


MASK_PRESETS = {
    "maskrcnn_r50_fpn_mask_head_coco": MaskHeadConfig(),
    # Built-in demo: a ResNet-18 FPN mask head on the generated COCO-format sample, a few CPU minutes.
    "maskrcnn_demo": MaskHeadConfig(
        preset="maskrcnn_demo", data="samples/coco", out="runs/maskrcnn_demo", resume=True, depth=18,
        base_width=16, fpn_channels=64, head_channels=64, fc_units=256, short_side=256, long_side=320,
        batch_size=2, num_rois=32, positive_fraction=0.5, steps=300, steps_per_epoch=60, lr=0.004,
        milestones=(240,), warmup_steps=30),
}
MASK_DEMO_PRESET = "maskrcnn_demo"


def _parse_tuple(text, cast, pair):
    values = tuple(cast(v) for v in text.replace("x", ",").split(",") if v.strip())
    if pair and len(values) == 1:  # --crop 713 means 713x713
        values = values * 2
    if pair and len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected two values like 713,713, got {text!r}")
    return values


def build_parser(config_class=PSPNetConfig, presets=PRESETS):
    """Flags for every field of config_class (default None = keep the preset's value)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    parser.add_argument("--preset", choices=sorted(presets), default=None,
                        help="named recipe (default: the demo when no --data is given)")
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(value, tuple):
            cast, pair = type(value[0]), field.name in ("crop", "scale_range")
            parser.add_argument(flag, type=lambda t, c=cast, p=pair: _parse_tuple(t, c, p), default=None,
                                help=f"comma-separated, e.g. {','.join(map(str, value))} (preset value otherwise)")
        else:
            parser.add_argument(flag, type=type(value), default=None)
    return parser


def resolve_config(args, config_class=PSPNetConfig, presets=PRESETS, demo=DEMO_PRESET, full=None):
    """The preset named by --preset (or the default), with every flag that was given applied."""
    full = full or next(name for name in presets if name != demo)
    name = args.preset or (demo if not args.data else full)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    config = dataclasses.replace(presets[name], **overrides)
    if not config.out:
        config = dataclasses.replace(config, out=os.path.join("runs", config.preset))
    if config.strategy not in ("none", "mirrored", "multiworker"):
        raise SystemExit(f"--strategy must be none, mirrored or multiworker, got {config.strategy!r}")
    if not config.data:
        raise SystemExit("--data is required: the dataset root (python train.py --help)")
    return config


# ----------------------------------------------------------------------------
# Building blocks (importable, tested)
# ----------------------------------------------------------------------------

def make_strategy(name):
    """tf.distribute strategy for --strategy (TF_CONFIG configures multiworker)."""
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy()


def count_train_images(config):
    if config.tfds:
        return None  # known after TFDS has built the dataset
    from data import cityscapes

    return len(cityscapes.find_examples(config.data, "train"))


def read_split(config, split, *, shuffle=False, input_context=None):
    """Decoded Cityscapes elements of one split, from the folders or from TFDS."""
    from data import cityscapes

    if config.tfds:
        data_dir = config.tfds_data_dir or os.path.join(config.data, "tfds")
        return cityscapes.read_tfds(split, data_dir=data_dir, manual_dir=config.data, shuffle=shuffle,
                                    seed=config.seed, input_context=input_context)
    return cityscapes.read_folder(config.data, split, shuffle=shuffle, seed=config.seed,
                                  input_context=input_context)


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


def _make_validation_callback(dataset, num_classes, aux_weight):
    import keras
    import tensorflow as tf

    import losses

    class SegmentationValidation(keras.callbacks.Callback):
        """Scores full validation images after each epoch; adds val_loss and val_main_miou to the epoch logs.

        Runs outside the replicas (one device), so images of any size and any
        count work under every strategy (Keras's own validation splits each
        batch over the replicas and fails on a batch smaller than their number).
        Must come before the callbacks that read these logs.
        """

        _predict = None

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            if self._predict is None:  # one compiled function for the whole run (any image size)
                self._predict = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
            miou = keras.metrics.MeanIoU(num_classes, ignore_class=255, sparse_y_pred=False)
            total, count = 0.0, 0
            for images, labels in dataset:
                outputs = self._predict(images)
                miou.update_state(labels, outputs["main"])
                total += float(losses.pspnet_loss(labels, outputs["main"], outputs["aux"], num_classes,
                                                  aux_weight=aux_weight))
                count += 1
            logs["val_loss"] = total / max(count, 1)
            logs[MONITOR] = float(miou.result())
            print(f" - val_loss: {logs['val_loss']:.4f} - {MONITOR}: {logs[MONITOR]:.4f}", flush=True)

    return SegmentationValidation()


def steps_plan(config, num_train_images):
    """(epochs, steps_per_epoch, total_steps) from epochs/steps/steps_per_epoch and the dataset size."""
    per_epoch = config.steps_per_epoch or max(num_train_images // config.batch_size, 1)
    if config.steps:
        epochs = -(-config.steps // per_epoch)
        return epochs, per_epoch, config.steps
    return config.epochs, per_epoch, config.epochs * per_epoch


def build_compiled_pspnet(config, total_steps, sync_bn):
    """PSPNet with the recipe's optimizer, losses (main + aux_weight * aux) and val mIoU, compiled."""
    import keras

    import losses
    from models import build_pspnet
    from models.pspnet import head_layer_names
    from models.training import SegmentationSGD, poly_schedule

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


MONITOR = "val_main_miou"


def train_pspnet(config, strategy=None):
    """Runs (or resumes) one training run; returns the run folder.

    strategy: a tf.distribute strategy; None builds the one --strategy names.
    Raises SystemExit with a one-line message on a non-finite loss (the last
    good checkpoint stays as it was).
    """
    import keras

    import losses  # noqa: F401  (registers the loss classes that a resumed checkpoint names)
    from models.training import LAST_CHECKPOINT, standard_callbacks

    strategy, state = _start_run(config, strategy)

    num_train = count_train_images(config)
    if num_train is None:  # TFDS: build it first, then count
        import tensorflow_datasets as tfds

        read_split(config, "train")
        builder = tfds.builder("cityscapes/semantic_segmentation",
                               data_dir=config.tfds_data_dir or os.path.join(config.data, "tfds"))
        num_train = builder.info.splits["train"].num_examples
    epochs, steps_per_epoch, total_steps = steps_plan(config, num_train)
    initial_epoch = state["epochs_done"] if state else 0
    sync_bn = strategy.num_replicas_in_sync > 1

    if config.strategy == "multiworker":
        return _train_custom_loop(config, strategy, state, epochs, steps_per_epoch, total_steps)

    with strategy.scope():
        if state:
            model = keras.saving.load_model(os.path.join(config.out, LAST_CHECKPOINT))
            model.jit_compile = config.jit_compile
        else:
            model = build_compiled_pspnet(config, total_steps, sync_bn)
    print(f"training {config.preset}: {epochs} epochs x {steps_per_epoch} steps (batch {config.batch_size}, "
          f"{strategy.num_replicas_in_sync} replica(s)); starting at epoch {initial_epoch + 1}; run folder {config.out}")
    callbacks, guard = standard_callbacks(config.out, monitor=MONITOR, keep=config.keep_checkpoints,
                                          initial_state=state)
    validation = _make_validation_callback(val_dataset(config), config.num_classes, config.aux_weight)
    if initial_epoch < epochs:
        model.fit(train_dataset(config, config.batch_size), epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=steps_per_epoch, callbacks=[validation] + callbacks, verbose=config.verbose)
    if guard.failed_at is not None:
        raise SystemExit(guard.message(config.out))
    return config.out


def _train_custom_loop(config, strategy, state, epochs, steps_per_epoch, total_steps):
    """Multi-worker training with strategy.run (Keras fit is not dependable under MultiWorkerMirroredStrategy).

    Same losses, optimizer, checkpoints and resume as the fit path; the chief
    (task 0) writes the run folder, the other workers write nothing. No
    per-epoch validation here: evaluate.py scores the checkpoints.
    """
    import keras
    import tensorflow as tf

    from models.training import LAST_CHECKPOINT, standard_callbacks

    resolver = getattr(strategy, "cluster_resolver", None)
    is_chief = resolver is None or resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0)
    with strategy.scope():
        if state:
            model = keras.saving.load_model(os.path.join(config.out, LAST_CHECKPOINT))
        else:
            model = build_compiled_pspnet(config, total_steps, sync_bn=strategy.num_replicas_in_sync > 1)
    loss_main, loss_aux = model.loss["main"], model.loss["aux"]
    optimizer = model.optimizer
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: train_dataset(config, config.batch_size, ctx))
    iterator = iter(dataset)

    @tf.function(jit_compile=config.jit_compile)
    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            # Each replica's loss is its share of the global mean (losses/distribute.py): the summed gradients are exact.
            loss = loss_main(labels["main"], outputs["main"]) + config.aux_weight * loss_aux(labels["aux"], outputs["aux"])
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)
        per_replica = strategy.run(replica_step, args=(images, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    callbacks, guard = standard_callbacks(config.out, monitor="loss", mode="min", keep=config.keep_checkpoints,
                                          initial_state=state, is_chief=is_chief)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    callback_list.on_train_begin()
    for epoch in range(state["epochs_done"] if state else 0, epochs):
        callback_list.on_epoch_begin(epoch)
        total = 0.0
        for step in range(steps_per_epoch):
            loss = float(train_step(iterator))
            total += loss
            callback_list.on_train_batch_end(step, {"loss": total / (step + 1)})
            if guard.failed_at is not None:
                break
        callback_list.on_epoch_end(epoch, {"loss": total / (step + 1)})
        if is_chief and config.verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / (step + 1):.4f}", flush=True)
        if guard.failed_at is not None:
            break
    callback_list.on_train_end()
    if guard.failed_at is not None:
        raise SystemExit(guard.message(config.out))
    return config.out


def run_demo(config):
    """`make demo`: sample data (generated once), train, evaluate, predict; prints where everything is."""
    import evaluate
    import predict
    from data import samples

    if not os.path.isdir(os.path.join(config.data, "leftImg8bit")):
        samples.main(["cityscapes", config.data])  # the built-in sample, at its default size
    run_dir = train_pspnet(config)
    checkpoint = os.path.join(run_dir, "best.keras")
    eval_dir = os.path.join(run_dir, "eval")
    metrics = evaluate.main(["--model", "pspnet", "--checkpoint", checkpoint, "--data", config.data,
                             "--split", "val", "--out", eval_dir, "--overwrite"])  # the demo's own outputs
    predict_dir = os.path.join(run_dir, "predict")
    val_images = os.path.join(config.data, "leftImg8bit", "val")
    predict.main(["--checkpoint", checkpoint, val_images, "--out", predict_dir, "--overwrite"])
    print("\ndemo finished:")
    print(f"  val mIoU            {metrics['mIoU']:.4f}")
    print(f"  checkpoints, curves {run_dir}/ (best.keras, curves.png, history.csv)")
    print(f"  evaluation          {eval_dir}/ (metrics.json, *_pred_labelIds.png, confusion_matrix.png)")
    print(f"  colour overlays     {predict_dir}/")
    return metrics


def _start_run(config, strategy):
    """Common start of a run: strategy, precision policy, seed, run folder (with config.json); returns (strategy, state)."""
    import keras
    import tensorflow as tf

    from models.training import RunDirError, prepare_run_dir

    strategy = strategy or make_strategy(config.strategy)
    if config.mixed_precision:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    try:
        state = prepare_run_dir(config.out, config.resume)
    except RunDirError as error:
        raise SystemExit(str(error))
    with open(os.path.join(config.out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
    return strategy, state


def read_coco_split(config, split):
    """data.coco.read_coco with one-line errors for a wrong --data."""
    from data import coco

    try:
        return coco.read_coco(config.data, split, skip_images_without_annotations=config.skip_empty_images)
    except FileNotFoundError as error:
        raise SystemExit(f"--data {config.data}: {error}")


def train_mask_head(config, strategy=None):
    """Trains (or resumes) the Mask R-CNN class and mask heads; returns the run folder.

    Loss: the shared losses.mask_rcnn_mask_loss (positive RoIs, ground-truth class channel, BCE from
    logits) + softmax class loss, both exact global means under tf.distribute (MaskHeadTrainer).
    Best checkpoint by val_loss on the ground-truth boxes; evaluate.py scores mask AP.
    """
    import keras

    import losses  # noqa: F401  (registers what a resumed checkpoint names)
    from data import coco
    from models.mask_rcnn import MaskHeadTrainer, build_mask_head_model
    from models.training import LAST_CHECKPOINT, SegmentationSGD, WarmupStepDecay, standard_callbacks

    if config.stage != "mask_head":
        raise SystemExit(f"--stage {config.stage}: only mask_head exists so far (the RPN and box head come next)")
    if config.strategy == "multiworker":
        raise SystemExit("--strategy multiworker: the mask-head stage supports none and mirrored for now")
    strategy, state = _start_run(config, strategy)
    train_split, val_split = read_coco_split(config, "train"), read_coco_split(config, "val")
    print(f"COCO train: {train_split.summary()}; val: {val_split.summary()}")
    sizes = dict(short_side=config.short_side, long_side=config.long_side)
    train_data = coco.make_dataset(train_split, batch_size=config.batch_size, training=True, seed=config.seed,
                                   **sizes)
    val_data = coco.make_dataset(val_split, batch_size=config.batch_size, training=False, **sizes)
    epochs = -(-config.steps // config.steps_per_epoch)
    initial_epoch = state["epochs_done"] if state else 0
    with strategy.scope():
        if state:
            trainer = keras.saving.load_model(os.path.join(config.out, LAST_CHECKPOINT))
        else:
            network = build_mask_head_model(
                train_split.categories.num_classes, depth=config.depth, base_width=config.base_width,
                fpn_channels=config.fpn_channels, head_channels=config.head_channels, fc_units=config.fc_units,
                freeze_backbone=config.freeze_backbone, sync_bn=strategy.num_replicas_in_sync > 1)
            trainer = MaskHeadTrainer(network, num_rois=config.num_rois, positive_fraction=config.positive_fraction,
                                      seed=config.seed)
            schedule = WarmupStepDecay(config.lr, milestones=config.milestones, warmup_steps=config.warmup_steps)
            trainer.compile(optimizer=SegmentationSGD(schedule, momentum=config.momentum, l2=config.weight_decay),
                            jit_compile=config.jit_compile)
    print(f"training {config.preset}: {epochs} epochs x {config.steps_per_epoch} steps (batch {config.batch_size}); "
          f"starting at epoch {initial_epoch + 1}; run folder {config.out}")
    callbacks, guard = standard_callbacks(config.out, monitor="val_loss", mode="min", keep=config.keep_checkpoints,
                                          initial_state=state)
    if initial_epoch < epochs:
        trainer.fit(train_data, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch,
                    validation_data=val_data, callbacks=callbacks, verbose=config.verbose, shuffle=False)
    if guard.failed_at is not None:
        raise SystemExit(guard.message(config.out))
    return config.out


def run_mask_head_demo(config):
    """`make demo-maskrcnn`: COCO-format sample (generated once), train the heads, oracle-box mask AP."""
    import evaluate
    from data import samples

    if not os.path.isdir(os.path.join(config.data, "annotations")):
        samples.main(["coco", config.data])  # the built-in sample, at its default size
    run_dir = train_mask_head(config)
    eval_dir = os.path.join(run_dir, "eval")
    metrics = evaluate.main(["--model", "mask_rcnn", "--boxes", "gt", "--checkpoint",
                             os.path.join(run_dir, "last.keras"), "--data", config.data, "--split", "val",
                             "--out", eval_dir, "--overwrite"])
    print("\ndemo finished:")
    print(f"  oracle-box segm AP  {metrics['segm_AP']:.4f} (AP50 {metrics['segm_AP50']:.4f})")
    print(f"  checkpoints, curves {run_dir}/")
    print(f"  evaluation          {eval_dir}/ (metrics.json, segm_results.json)")
    return metrics


def main(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model", choices=["pspnet", "mask_rcnn"], default="pspnet")
    known, _ = pre.parse_known_args(argv)
    if known.model == "mask_rcnn":
        args = build_parser(MaskHeadConfig, MASK_PRESETS).parse_args(argv)
        config = resolve_config(args, MaskHeadConfig, MASK_PRESETS, MASK_DEMO_PRESET)
        print("configuration:\n" + json.dumps(dataclasses.asdict(config), indent=2))
        run_mask_head_demo(config) if config.preset == MASK_DEMO_PRESET else train_mask_head(config)
        return 0
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    print("configuration:\n" + json.dumps(dataclasses.asdict(config), indent=2))
    run_demo(config) if config.preset == DEMO_PRESET else train_pspnet(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
