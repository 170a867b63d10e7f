"""The Mask R-CNN RoI-heads model: ResNet-FPN, RoIAlign, class and mask branches, class-picked masks."""
import keras

from models.fpn import build_resnet_fpn
from models.mask_rcnn.heads import ClassHead, MaskHead
from models.mask_rcnn.inference import PickMaskChannel, PredictClass
from models.roi_align import MultiLevelRoIAlign


def build_mask_head_model(num_classes, *, depth=50, base_width=64, fpn_channels=256, head_channels=256,
                          fc_units=1024, mask_roi_size=14, class_roi_size=7, sampling_ratio=2,
                          freeze_backbone=False, sync_bn=False, name="mask_rcnn_heads"):
    """Functional model: image and RoIs in, class and mask predictions out.

    Args:
      num_classes: K object classes (background not counted).
      depth, base_width, sync_bn: the ResNet (see models.resnet.build_resnet).
      fpn_channels, head_channels, fc_units: widths (256, 256, 1024 in the paper).
      mask_roi_size, class_roi_size: RoIAlign output sizes (14 and 7); masks
        come out at 2 * mask_roi_size.
      sampling_ratio: bilinear samples per bin side in RoIAlign.
      freeze_backbone: the ResNet's weights (and BN statistics) stay fixed.

    Inputs: {"image": [B, H, W, 3] float32 normalised, H and W multiples of 32,
             "rois": [B, R, 4] float32 (y1, x1, y2, x2) image pixels}.
    Outputs: {"class_logits": [B, R, K + 1] float32,
              "mask_logits": [B, R, m, m, K + 1] float32 (m = 2 * mask_roi_size),
              "class_ids": [B, R] int32 (1..K, the class branch's choice),
              "scores": [B, R] float32 (its probability),
              "masks": [B, R, m, m] float32 (probabilities of that class's channel)}.
    """
    image = keras.Input((None, None, 3), name="image")
    rois = keras.Input((None, 4), name="rois")
    fpn = build_resnet_fpn(depth, channels=fpn_channels, base_width=base_width, sync_bn=sync_bn)
    if freeze_backbone:
        fpn.get_layer("backbone").trainable = False
    pyramid = fpn(image)
    levels = [pyramid[f"P{k}"] for k in range(2, 6)]
    class_features = MultiLevelRoIAlign(class_roi_size, sampling_ratio, name="class_roi_align")([rois, *levels])
    mask_features = MultiLevelRoIAlign(mask_roi_size, sampling_ratio, name="mask_roi_align")([rois, *levels])
    class_logits = ClassHead(num_classes, fc_units, name="class_head")(class_features)
    mask_logits = MaskHead(num_classes, head_channels, name="mask_head")(mask_features)
    class_ids, scores = PredictClass(name="predict_class")(class_logits)
    masks = PickMaskChannel(name="class_picked_masks")([mask_logits, class_ids])
    outputs = {"class_logits": class_logits, "mask_logits": mask_logits, "class_ids": class_ids,
               "scores": scores, "masks": masks}
    return keras.Model({"image": image, "rois": rois}, outputs, name=name)
