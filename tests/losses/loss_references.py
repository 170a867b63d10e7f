"""Independent float64 NumPy references for the loss tests (no project code here)."""
import numpy as np


def logsumexp(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def pixelwise_softmax_ce(labels, logits, num_classes, ignore_label=255):
    """Mean over valid pixels of logsumexp(z) - z[label], by explicit loop-free indexing."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    logits = np.asarray(logits, np.float64).reshape(-1, num_classes)
    keep = (labels >= 0) & (labels < num_classes) & (labels != ignore_label)
    if not keep.any():
        return 0.0
    z = logits[keep]
    return float(np.mean(logsumexp(z) - z[np.arange(len(z)), labels[keep]]))


def bilinear_resize_half_pixel(x, out_h, out_w):
    """[B, H, W, C] -> [B, out_h, out_w, C], half-pixel centres, edge clamped (TF2 resize semantics)."""
    x = np.asarray(x, np.float64)
    _, h, w, _ = x.shape

    def axis_weights(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis_weights(h, out_h)
    x0, x1, wx = axis_weights(w, out_w)
    top = x[:, y0][:, :, x0] * (1 - wx)[None, None, :, None] + x[:, y0][:, :, x1] * wx[None, None, :, None]
    bot = x[:, y1][:, :, x0] * (1 - wx)[None, None, :, None] + x[:, y1][:, :, x1] * wx[None, None, :, None]
    return top * (1 - wy)[None, :, None, None] + bot * wy[None, :, None, None]


def bce(target, p, eps=1e-7):
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def bce_with_logits(target, z):
    z = np.asarray(z, np.float64)
    # log(1 + exp(-|z|)) + max(z, 0) - z * t, written out from the definition
    return np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0) - z * target


def mask_rcnn_mask_loss(target_masks, class_ids, pred, from_logits=False):
    """Literal loop over RoIs: mean BCE of each positive RoI's GT-class channel."""
    values = []
    batch, rois = class_ids.shape
    for b in range(batch):
        for r in range(rois):
            k = int(class_ids[b, r])
            if k <= 0:
                continue
            t = np.asarray(target_masks[b, r], np.float64)
            p = np.asarray(pred[b, r, :, :, k], np.float64)
            values.append(bce_with_logits(t, p) if from_logits else bce(t, p))
    return float(np.mean(values)) if values else 0.0
