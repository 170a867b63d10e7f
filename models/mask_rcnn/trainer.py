"""Training the whole Mask R-CNN detector (build_mask_rcnn) in stages; `fit`/`evaluate` take data.coco batches.

    detector = build_mask_rcnn(num_classes, ...)
    set_stage(detector, "heads")                       # what trains: see STAGES
    trainer = DetectorTrainer(detector, stage="heads")
    trainer.compile(optimizer=models.training.SegmentationSGD(schedule, momentum=0.9, l2=1e-4))
    trainer.fit(data.coco.make_dataset(split, batch_size=16, training=True), ...)

One training step, torchvision's MaskRCNN.forward in training mode, batched:
backbone + FPN -> RPN objectness and deltas over every anchor -> proposals
(rpn_pre_nms_top_n per level, NMS 0.7, rpn_post_nms_top_n per image: 2000 /
2000 as torchvision trains; no gradient flows through them) ->
box_head_targets (the proposals plus the ground truth, box_batch_size sampled,
a quarter positive, positives first) -> box head on the sampled RoIs -> mask
head on the positive ones only (positive_rois: one flat list of the batch's
positives, a variable number, as torchvision's RoIHeads) -> detector_losses
(the five losses, each an exact global mean under tf.distribute).

Stages (set_stage decides the trainable flags; the trainer minimises):
- "heads": RPN, box and mask heads and the FPN train, the whole ResNet is
  frozen (torchvision's fine-tuning with trainable_backbone_layers=0: its FPN
  belongs to the "backbone" module but always trains); minimises the sum.
- "mask_head": only the mask branch trains, on a frozen detector; its RoIs are
  the detector's own proposals (mask_rois="proposals") or ground-truth-derived
  boxes (mask_rois="gt": sample_rois' jittered ground truth and random boxes,
  so the mask branch trains on boxes like the oracle ones that
  evaluate.py --boxes gt scores it on); minimises the mask loss only (the
  other four are computed and logged).
- "all": everything but the ResNet's stem and first stage, BatchNorm frozen
  (build_mask_rcnn's trainable_backbone_stages=3, torchvision's default);
  minimises the sum.
Logged metrics: loss (what is minimised) and each component
(rpn_objectness_loss, rpn_box_loss, box_class_loss, box_regression_loss,
mask_loss), all global means.
"""
import keras
import tensorflow as tf

from models.mask_rcnn.detector import detector_layers, freeze_backbone
from models.mask_rcnn.losses import LOSS_NAMES, detector_losses
from models.mask_rcnn.rpn import Proposals
from models.mask_rcnn.targets import box_head_targets, positive_rois, sample_rois
from models.mask_rcnn.transform import detector_inputs

STAGES = ("heads", "mask_head", "all")
MASK_ROIS = ("proposals", "gt")
METRIC_NAMES = ("loss",) + tuple(f"{name}_loss" for name in LOSS_NAMES)


def _is_v2(detector):
    """build_mask_rcnn's variant "v2" has BatchNorm in the FPN (and a trainable backbone BatchNorm)."""
    return any(layer.name == "fpn_output2_bn" for layer in detector.get_layer("fpn").layers)


def _make_trainable(layer):
    """Everything in `layer` trainable again. Keras's trainable setter reaches a custom layer's sublayers
    but not the layers of a nested functional model (the FPN, its ResNet): those are visited here."""
    layer.trainable = True
    for sublayer in getattr(layer, "layers", ()):
        _make_trainable(sublayer)


def set_stage(detector, stage, *, trainable_backbone_stages=3, freeze_batch_norm=None):
    """Sets the trainable flags of a build_mask_rcnn model for `stage` (see the module docstring).

    trainable_backbone_stages, freeze_batch_norm: the ResNet's, in stage "all"
    (defaults: 3, and frozen BatchNorm in v1 as build_mask_rcnn builds it). A
    detector trained from random weights needs 5 and trainable BatchNorm
    (torchvision's choice without pretrained weights: frozen random statistics
    let the activations grow through 50 layers).
    Starts from everything trainable, so a model saved after another stage is
    re-staged correctly. Frozen layers (trainable=False) also run their
    BatchNormalization in inference mode.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    _make_trainable(detector)
    backbone = detector.get_layer("fpn").get_layer("backbone")
    if stage == "all":
        freeze_batch_norm = not _is_v2(detector) if freeze_batch_norm is None else freeze_batch_norm
        freeze_backbone(backbone, trainable_backbone_stages, freeze_batch_norm=freeze_batch_norm)
    elif stage == "heads":
        backbone.trainable = False
    else:
        for layer in detector.layers:
            layer.trainable = layer.name == "mask_head"


def _rpn_backward_after_roi_heads(objectness, rpn_deltas, levels):
    """(objectness, rpn_deltas, levels) unchanged; in the backward pass the RPN's gradients are released only
    once the RoI heads' gradients of the levels are complete, summed over the box and mask branches.

    objectness [B, N], rpn_deltas [B, N, 4]: the RPN head's outputs; levels:
    the FPN maps [B, H_k, W_k, C] that both RoIAligns read. torch's autograd
    runs the backward in this order (the RoI heads were created last), adding
    each gradient into one buffer per tensor. TensorFlow's executor would run
    the RPN's backward, with its [B, H/4, W/4, 256] gradients, while the RoI
    heads' is still going, and would keep the box and the mask RoIAlign's
    gradients of P2 until the RPN's came in too (one AddN of all three):
    together 214 MiB more at the peak of a 2 x 800 x 1344 step
    (measured, BENCHMARKS.md 4b).
    """

    @tf.custom_gradient
    def ordered(objectness, rpn_deltas, *levels):
        def gradient(d_objectness, d_rpn_deltas, *d_levels):
            with tf.control_dependencies(d_levels):
                return (tf.identity(d_objectness), tf.identity(d_rpn_deltas), *d_levels)

        return (tf.identity(objectness), tf.identity(rpn_deltas), *[tf.identity(level) for level in levels]), gradient

    objectness, rpn_deltas, *levels = ordered(objectness, rpn_deltas, *levels)
    return objectness, rpn_deltas, levels


@keras.saving.register_keras_serializable(package="models")
class DetectorTrainer(keras.Model):
    """Trains a build_mask_rcnn detector (see the module docstring); the detector is `trainer.detector`.

    Args:
      detector: a build_mask_rcnn model, its trainable flags already set (set_stage).
      stage: one of STAGES: which loss is minimised ("mask_head": the mask loss).
      mask_rois: "proposals" or "gt": where the sampled RoIs come from (MASK_ROIS).
      rpn_pre_nms_top_n, rpn_post_nms_top_n: training proposals (torchvision: 2000, 2000).
      rpn_batch_size: anchors sampled per image for the RPN losses (256, half positive at most).
      box_batch_size, box_positive_fraction: RoIs sampled per image for the box
        head (512, 0.25); the mask head runs on the positives among them.
      seed: the RoI and anchor sampling's seed.
    """

    def __init__(self, detector, *, stage="all", mask_rois="proposals", rpn_pre_nms_top_n=2000,
                 rpn_post_nms_top_n=2000, rpn_batch_size=256, box_batch_size=512, box_positive_fraction=0.25,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if stage not in STAGES or mask_rois not in MASK_ROIS:
            raise ValueError(f"stage must be one of {STAGES} and mask_rois one of {MASK_ROIS}, "
                             f"got {stage!r}, {mask_rois!r}")
        self.detector = detector
        self.stage = stage
        self.mask_rois = mask_rois
        self.rpn_pre_nms_top_n = int(rpn_pre_nms_top_n)
        self.rpn_post_nms_top_n = int(rpn_post_nms_top_n)
        self.rpn_batch_size = int(rpn_batch_size)
        self.box_batch_size = int(box_batch_size)
        self.box_positive_fraction = float(box_positive_fraction)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.stages = detector_layers(detector)
        inference = self.stages["proposals"]
        self.train_proposals = Proposals(inference.num_anchors, self.rpn_pre_nms_top_n, self.rpn_post_nms_top_n,
                                         inference.nms_threshold, inference.min_size, name="train_proposals")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self.built = True  # the detector is a built functional model

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        """The detector's detections: of its own inputs, or of a data.coco batch (what Keras hands over
        when it builds the trainer inside fit)."""
        return self.detector(detector_inputs(inputs), training=training)

    def _candidates(self, data, rpn):
        """Candidate RoIs [B, P, 4] and their validity [B, P] for box_head_targets (no gradient)."""
        if self.mask_rois == "gt":
            num_rois = int(self.box_batch_size * self.box_positive_fraction)  # candidates per image
            sampled = sample_rois(data["boxes"], data["class_ids"], data["image_size"], num_rois=num_rois,
                                  crowd_boxes=data.get("crowd_boxes"), seed=self.seed_generator)
            return sampled["rois"], sampled["valid"]
        proposals, _, count = self.train_proposals(rpn)
        valid = tf.range(tf.shape(proposals)[1])[None] < count[:, None]
        return tf.stop_gradient(proposals), valid

    def losses_of(self, data, training):
        """detector_losses of one data.coco batch (a dict of scalars: the five losses and their sum)."""
        inputs = detector_inputs(data)  # uint8 images resized, normalised and padded here, in the step's graph
        images, image_sizes = inputs["images"], inputs["image_sizes"]
        pyramid = self.stages["fpn"](images, training=training)
        levels = [pyramid[f"P{k}"] for k in range(2, 7)]
        anchors = self.stages["anchors"]([images, *levels])
        objectness, rpn_deltas = self.stages["rpn_head"](levels, training=training)
        candidates, valid = self._candidates(data, [objectness, rpn_deltas, anchors, image_sizes, *levels])
        roi_levels = levels[:4]
        if self.stages["fpn"].trainable_weights:  # else no gradient reaches the levels: nothing to order
            objectness, rpn_deltas, roi_levels = _rpn_backward_after_roi_heads(objectness, rpn_deltas, roi_levels)
        sampled = box_head_targets(candidates, data["boxes"], data["class_ids"], data.get("crowd_boxes"),
                                   proposal_valid=valid, num_samples=self.box_batch_size,
                                   positive_fraction=self.box_positive_fraction, seed=self.seed_generator)
        class_logits, box_deltas = self.stages["box_head"](
            self.stages["box_roi_align"]([sampled["rois"], *roi_levels]), training=training)
        positives = positive_rois(sampled)
        mask_features = self.stages["mask_roi_align"]([positives["rois"], *roi_levels],
                                                      image_index=positives["image_index"])  # [N, 14, 14, C]
        mask_logits = self.stages["mask_head"](mask_features[None], training=training)[0]  # as one image of N RoIs
        outputs = {"anchors": anchors[0], "rpn_logits": objectness, "rpn_deltas": rpn_deltas,
                   "class_logits": class_logits, "box_deltas": box_deltas, "mask_logits": mask_logits}
        return detector_losses(outputs, data, sampled, seed=self.seed_generator, positives=positives,
                               rpn_num_samples=self.rpn_batch_size)

    def _objective(self, parts):
        return parts["mask"] if self.stage == "mask_head" else parts["loss"]

    def logged(self, parts):
        """The METRIC_NAMES values of detector_losses' parts: the objective as "loss", each component."""
        return {"loss": self._objective(parts), **{f"{name}_loss": parts[name] for name in LOSS_NAMES}}

    def _record(self, parts):
        # The losses are this replica's shares of global means: scaled back up for the logs.
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        for name, value in self.logged(parts).items():
            self.trackers[name].update_state(value * replicas)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @staticmethod
    def _batch(data):
        # fit/evaluate pass the dataset's dict itself; train_on_batch/test_on_batch wrap it as (x, y, sample_weight).
        return data[0] if isinstance(data, tuple) else data

    def optimizer_step(self, data):
        """One optimizer step on a data.coco batch; returns detector_losses' parts (this replica's shares).

        Keras fit calls it through train_step; models/training/custom_loop.py (multi-worker runs) through strategy.run.
        """
        with tf.GradientTape() as tape:
            parts = self.losses_of(data, training=True)
            scaled = self.optimizer.scale_loss(self._objective(parts))
        # The backward starts once the whole forward has run, as torch's loss.backward() does. With the
        # default seed (a constant 1), TensorFlow's executor ran the RPN losses' backward, with its
        # [B, H/4, W/4, 256] gradients, alongside the RoI heads' forward and their RoIAlign temporaries.
        with tf.control_dependencies([scaled]):
            seed = tf.ones_like(scaled)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables, output_gradients=seed), variables))
        return parts

    def train_step(self, data):
        return self._record(self.optimizer_step(self._batch(data)))

    def test_step(self, data):
        return self._record(self.losses_of(self._batch(data), training=False))

    def get_config(self):
        return {**super().get_config(), "detector": keras.saving.serialize_keras_object(self.detector),
                "stage": self.stage, "mask_rois": self.mask_rois, "rpn_pre_nms_top_n": self.rpn_pre_nms_top_n,
                "rpn_post_nms_top_n": self.rpn_post_nms_top_n, "rpn_batch_size": self.rpn_batch_size,
                "box_batch_size": self.box_batch_size, "box_positive_fraction": self.box_positive_fraction,
                "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["detector"] = keras.saving.deserialize_keras_object(config["detector"])
        return cls(**config)
