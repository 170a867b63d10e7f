"""The two sources' test code, transcribed step by step in NumPy float64 (and torch where the source
calls F.interpolate), around a network forward `forward(x [N, h, w, 3] float32) -> logits [N, h, w, C]`.

semseg_test: hszhao/semseg tool/test.py (test, scale_process, net_process) with the dataset's
float32 RGB image. mmseg_test: mmsegmentation 0.x MultiScaleFlipAug(Resize keep_ratio, RandomFlip,
Normalize) + EncoderDecoder.aug_test/inference/slide_inference/whole_inference. OpenCV's
cv2.resize(INTER_LINEAR) is written out: its float arithmetic (cv2_linear) and, for mmsegmentation's
uint8 images, its fixed-point arithmetic (cv2_linear_uint8, from imgproc/src/resize.cpp; it matched
opencv-python 4.10 and 5.1 on every pixel of the sizes in test_protocols.py and of Cityscapes' test scales).
"""
import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def _linear_weights(src, dst):
    """[dst, src] matrix of cv2 INTER_LINEAR along one axis: fx = (dx + 0.5) * src / dst - 0.5,
    sx = floor(fx); sx < 0 -> (0, weight 0); sx >= src - 1 -> (src - 1, weight 0) (resize.cpp)."""
    m = np.zeros((dst, src))
    for dx in range(dst):
        fx = (dx + 0.5) * (src / dst) - 0.5
        sx = int(np.floor(fx))
        fx -= sx
        if sx < 0:
            fx, sx = 0.0, 0
        if sx >= src - 1:
            fx, sx = 0.0, src - 1
        m[dx, sx] += 1.0 - fx
        if fx:
            m[dx, sx + 1] += fx
    return m


def cv2_linear(image, width, height):
    """cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) in float64. image: [h, w, C]."""
    rows = _linear_weights(image.shape[0], height)
    cols = _linear_weights(image.shape[1], width)
    return np.einsum("yi,ijc,xj->yxc", rows, np.asarray(image, np.float64), cols)


def cv2_linear_uint8(image, width, height):
    """cv2.resize(uint8 image, (width, height), interpolation=cv2.INTER_LINEAR): OpenCV's fixed point.

    Coefficients: fx = (float)((dx + 0.5) * (1. / (width / w)) - 0.5), sx = floor(fx), fx -= sx, in float32;
    columns outside the image clamp index and weight (fx = 0), rows clamp only the index; weights
    saturate_cast<short>(w * 2048) (round half to even). Horizontal pass: exact integer sums.
    Vertical pass (VResizeLinearVec_32s8u): mul_hi(h0 >> 4, b0) + mul_hi(h1 >> 4, b1), rounding shift by 2.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()

    def axis(src, dst, clamp_weight):
        out = []
        for d in range(dst):
            f = np.float32((d + 0.5) * (1.0 / (dst / src)) - 0.5)
            s = int(np.floor(f))
            f = np.float32(f - np.float32(s))
            if clamp_weight and (s < 0 or s >= src - 1):
                f = np.float32(0)
            w0 = int(np.rint((np.float32(1) - f) * np.float32(2048)))
            w1 = int(np.rint(f * np.float32(2048)))
            out.append((min(max(s, 0), src - 1), min(max(s + 1, 0), src - 1), w0, w1))
        return out

    pixels = image.astype(np.int64)
    rows = np.stack([pixels[:, s0] * a0 + pixels[:, s1] * a1 for s0, s1, a0, a1 in axis(w, width, True)], axis=1)
    result = np.empty((height, width) + image.shape[2:], np.int64)
    for y, (s0, s1, b0, b1) in enumerate(axis(h, height, False)):
        value = ((rows[s0] >> 4) * b0 >> 16) + ((rows[s1] >> 4) * b1 >> 16)
        result[y] = (value + 2) >> 2
    return np.clip(result, 0, 255).astype(np.uint8)


def softmax(z, axis):
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


# ---- hszhao/semseg tool/test.py ---------------------------------------------------------------

def _net_process(forward, image, flip=True):
    """image [h, w, 3] float (0..255, padded with the mean) -> [h, w, C] probabilities."""
    x = (image - MEAN) / STD
    batch = np.stack([x, x[:, ::-1]]) if flip else x[None]
    output = forward(batch.astype(np.float32))  # the model's output is the input's size: no F.interpolate
    output = softmax(output, axis=3)
    return (output[0] + output[1][:, ::-1]) / 2 if flip else output[0]


def _scale_process(forward, image, classes, crop_h, crop_w, h, w, stride_rate=2 / 3):
    ori_h, ori_w, _ = image.shape
    pad_h = max(crop_h - ori_h, 0)
    pad_w = max(crop_w - ori_w, 0)
    pad_h_half = int(pad_h / 2)
    pad_w_half = int(pad_w / 2)
    if pad_h > 0 or pad_w > 0:  # cv2.copyMakeBorder(..., cv2.BORDER_CONSTANT, value=mean)
        padded = np.empty((ori_h + pad_h, ori_w + pad_w, 3))
        padded[:] = MEAN
        padded[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w] = image
        image = padded
    new_h, new_w, _ = image.shape
    stride_h = int(np.ceil(crop_h * stride_rate))
    stride_w = int(np.ceil(crop_w * stride_rate))
    grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
    grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
    prediction_crop = np.zeros((new_h, new_w, classes), dtype=float)
    count_crop = np.zeros((new_h, new_w), dtype=float)
    for index_h in range(0, grid_h):
        for index_w in range(0, grid_w):
            s_h = index_h * stride_h
            e_h = min(s_h + crop_h, new_h)
            s_h = e_h - crop_h
            s_w = index_w * stride_w
            e_w = min(s_w + crop_w, new_w)
            s_w = e_w - crop_w
            image_crop = image[s_h:e_h, s_w:e_w].copy()
            count_crop[s_h:e_h, s_w:e_w] += 1
            prediction_crop[s_h:e_h, s_w:e_w, :] += _net_process(forward, image_crop)
    prediction_crop /= np.expand_dims(count_crop, 2)
    prediction_crop = prediction_crop[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w]
    return cv2_linear(prediction_crop, w, h)


def semseg_test(forward, image_uint8, classes, base_size, crop, scales):
    """-> (prediction [H, W, C] averaged probabilities, labels [H, W])."""
    image = np.float32(image_uint8)  # SemData: np.float32(cv2 RGB image)
    h, w, _ = image.shape
    prediction = np.zeros((h, w, classes), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h = long_size
        new_w = long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        image_scale = cv2_linear(image, new_w, new_h)
        prediction += _scale_process(forward, image_scale, classes, crop, crop, h, w)
    prediction /= len(scales)
    return prediction, np.argmax(prediction, axis=2)


# ---- mmsegmentation 0.x ------------------------------------------------------------------------

def _imrescale(img, scale):
    """mmcv.imrescale(img, (long, short)): rescale_size + _scale_size + imresize(bilinear), uint8 in and out."""
    h, w = img.shape[:2]
    scale_factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_w, new_h = int(w * float(scale_factor) + 0.5), int(h * float(scale_factor) + 0.5)
    return cv2_linear_uint8(img, new_w, new_h)


def _resize(x, size, align_corners):
    """mmseg.ops.resize = F.interpolate(mode='bilinear'); x [N, C, h, w] float64."""
    return torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                           align_corners=align_corners).numpy()


def _encode_decode(forward, img):
    """[N, 3, h, w] -> [N, C, h, w] logits (the model includes the resize to the input size)."""
    return np.asarray(forward(img.transpose(0, 2, 3, 1).astype(np.float32)), np.float64).transpose(0, 3, 1, 2)


def _slide_inference(forward, img, ori_shape, crop_size, stride, align_corners):
    h_stride, w_stride = stride
    h_crop, w_crop = crop_size
    batch_size, _, h_img, w_img = img.shape
    preds, count_mat = None, np.zeros((batch_size, 1, h_img, w_img))
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_seg_logit = _encode_decode(forward, img[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = np.zeros((batch_size, crop_seg_logit.shape[1], h_img, w_img))
            preds += np.pad(crop_seg_logit, ((0, 0), (0, 0), (y1, h_img - y2), (x1, w_img - x2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    preds = preds / count_mat
    return _resize(preds, ori_shape, align_corners)


def _inference(forward, img, meta, test_cfg, align_corners):
    if test_cfg["mode"] == "slide":
        seg_logit = _slide_inference(forward, img, meta["ori_shape"], test_cfg["crop_size"], test_cfg["stride"],
                                     align_corners)
    else:
        seg_logit = _resize(_encode_decode(forward, img), meta["ori_shape"], align_corners)
    output = softmax(seg_logit, axis=1)
    if meta["flip"]:
        output = output[:, :, :, ::-1]
    return output


def mmseg_test(forward, image_uint8, test_cfg, img_scale, img_ratios, flip, align_corners):
    """-> (seg_logit [H, W, C] averaged softmax, labels [H, W])."""
    ori_shape = image_uint8.shape[:2]
    scales = [(int(img_scale[0] * r), int(img_scale[1] * r)) for r in img_ratios]  # MultiScaleFlipAug
    imgs, metas = [], []
    for scale in scales:
        for f in ([False, True] if flip else [False]):
            img = _imrescale(image_uint8, scale)  # Resize(keep_ratio=True)
            if f:
                img = img[:, ::-1]  # RandomFlip
            img = (img.astype(np.float64) - MEAN) / STD  # Normalize (RGB here: to_rgb on a BGR file)
            imgs.append(img.transpose(2, 0, 1)[None])
            metas.append(dict(ori_shape=ori_shape, flip=f))
    seg_logit = _inference(forward, imgs[0], metas[0], test_cfg, align_corners)
    for i in range(1, len(imgs)):
        seg_logit += _inference(forward, imgs[i], metas[i], test_cfg, align_corners)
    seg_logit /= len(imgs)
    return seg_logit[0].transpose(1, 2, 0), seg_logit.argmax(axis=1)[0]
