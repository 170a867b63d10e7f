"""The two published PyTorch PSPNets, rewritten in plain torch (neither is installable here): the converter
tests' references and the PyTorch side of benchmarks/deploy.py.

- SemsegPSPNet: hszhao/semseg's model/pspnet.py on its model/resnet.py (deep_base=True),
  written from that code: same modules in the same order, so the same state-dict
  keys (`layer0.{0,1,3,4,6,7}`, `layer1..4`, `ppm.features.{i}.{1,2}`, `cls.{0,1,4}`,
  `aux.{0,1,4}`), the same in-place dilation of every conv2 of layer3/layer4 (first
  block too) and stride 1 on their downsample, and F.interpolate(align_corners=True).
  semseg is not a package (no setup.py), so it cannot be installed and imported.
- MmsegPSPNet: mmsegmentation's EncoderDecoder with ResNetV1c (depth, deep stem
  stem_channels // 2, stem_channels; strides (1, 2, 1, 1), dilations (1, 1, 2, 4),
  contract_dilation=True, style="pytorch"), PSPHead (pool_scales (1, 2, 3, 6),
  channels 512) and FCNHead aux (num_convs=1, concat_input=False, channels 256),
  align_corners=False, as configs/_base_/models/pspnet_r50-d8.py (True in the
  *_cityscapes-769x769.py configs); mmcv's ConvModule
  reproduced as conv (no bias) + `bn` + ReLU, so the keys match
  (`backbone.stem.*`, `decode_head.psp_modules.{i}.1.conv`, `auxiliary_head.convs.0.bn`, ...).
  mmseg/mmcv need compiled ops and cannot be installed here.

`width` (64 in every published model) scales the channels so tests can also run small models.
Both take NCHW images normalised as this project's (RGB - INPUT_MEAN) / INPUT_STD and return logits.
TensorFlow is not imported here (a memory probe of torch alone carries no TensorFlow runtime); in a process
that uses both, import torch first (tests/conftest.py says why).
"""
import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv3x3(inplanes, planes, stride=1):
    return nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)


class _Bottleneck(nn.Module):
    """Both projects' Bottleneck (same modules, keys and forward): stride on the 3x3, padding = dilation."""

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + identity)


def _semseg_layer(inplanes, planes, blocks, stride):
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * 4))
    layers = [_Bottleneck(inplanes, planes, stride, downsample=downsample)]
    layers += [_Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class _SemsegPPM(nn.Module):
    def __init__(self, in_dim, reduction_dim, bins):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
                          nn.BatchNorm2d(reduction_dim), nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x):
        return torch.cat([x] + [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True)
                                for f in self.features], 1)


class SemsegPSPNet(nn.Module):
    def __init__(self, depth=50, classes=19, width=64, bins=(1, 2, 3, 6), dropout=0.1, aux=True):
        super().__init__()
        w = width
        self.layer0 = nn.Sequential(_conv3x3(3, w, 2), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                    _conv3x3(w, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                    _conv3x3(w, 2 * w), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
                                    nn.MaxPool2d(3, stride=2, padding=1))
        blocks = BLOCKS[depth]
        self.layer1 = _semseg_layer(2 * w, w, blocks[0], 1)
        self.layer2 = _semseg_layer(4 * w, 2 * w, blocks[1], 2)
        self.layer3 = _semseg_layer(8 * w, 4 * w, blocks[2], 2)
        self.layer4 = _semseg_layer(16 * w, 8 * w, blocks[3], 2)
        for layer, dilation in ((self.layer3, 2), (self.layer4, 4)):  # as semseg's PSPNet.__init__
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (dilation, dilation), (dilation, dilation), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        fea_dim = 32 * w
        self.ppm = _SemsegPPM(fea_dim, fea_dim // len(bins), bins)
        self.cls = nn.Sequential(nn.Conv2d(2 * fea_dim, 8 * w, 3, padding=1, bias=False), nn.BatchNorm2d(8 * w),
                                 nn.ReLU(inplace=True), nn.Dropout2d(p=dropout), nn.Conv2d(8 * w, classes, 1))
        if aux:
            self.aux = nn.Sequential(nn.Conv2d(16 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w),
                                     nn.ReLU(inplace=True), nn.Dropout2d(p=dropout), nn.Conv2d(4 * w, classes, 1))

    def forward(self, x):
        h, w = x.shape[2:]
        assert (h - 1) % 8 == 0 and (w - 1) % 8 == 0  # semseg's requirement
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))
        x = self.cls(self.ppm(x))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


class _ConvModule(nn.Module):
    """mmcv's ConvModule with a norm: conv (bias='auto' -> none) + `bn` + ReLU."""

    def __init__(self, inplanes, planes, kernel_size, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(inplanes, planes, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activate(self.bn(self.conv(x)))


def _mmseg_res_layer(inplanes, planes, blocks, stride, dilation):
    """mmseg's ResLayer with contract_dilation=True, multi_grid=None, avg_down=False."""
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * 4))
    first_dilation = dilation // 2 if dilation > 1 else dilation
    layers = [_Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
    layers += [_Bottleneck(planes * 4, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class _ResNetV1c(nn.Module):
    def __init__(self, depth, width):
        super().__init__()
        stem = width  # stem_channels == base_channels == 64 in the configs
        self.stem = nn.Sequential(
            _conv3x3(3, stem // 2, 2), nn.BatchNorm2d(stem // 2), nn.ReLU(inplace=True),
            _conv3x3(stem // 2, stem // 2), nn.BatchNorm2d(stem // 2), nn.ReLU(inplace=True),
            _conv3x3(stem // 2, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem
        for i, (blocks, stride, dilation) in enumerate(zip(BLOCKS[depth], (1, 2, 1, 1), (1, 1, 2, 4))):
            planes = width * 2 ** i
            self.add_module(f"layer{i + 1}", _mmseg_res_layer(inplanes, planes, blocks, stride, dilation))
            inplanes = planes * 4

    def forward(self, x):
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


class _PSPHead(nn.Module):
    def __init__(self, in_channels, channels, classes, pool_scales=(1, 2, 3, 6), align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _ConvModule(in_channels, channels, 1)) for s in pool_scales)
        self.bottleneck = _ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        outs = [x] + [F.interpolate(m(x), x.shape[2:], mode="bilinear", align_corners=self.align_corners)
                      for m in self.psp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, 1))))


class _FCNHead(nn.Module):
    def __init__(self, in_channels, channels, classes):
        super().__init__()
        self.convs = nn.Sequential(_ConvModule(in_channels, channels, 3, padding=1))
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self.dropout = nn.Dropout2d(0.1)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class MmsegPSPNet(nn.Module):
    """align_corners: False in the 512x1024 configs, True in the 769x769 ones (both heads and the output)."""

    def __init__(self, depth=50, classes=19, width=64, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.backbone = _ResNetV1c(depth, width)
        self.decode_head = _PSPHead(32 * width, 8 * width, classes, align_corners=align_corners)
        self.auxiliary_head = _FCNHead(16 * width, 4 * width, classes)

    def forward(self, img):
        """EncoderDecoder.encode_decode: decode head on C5, logits resized to the image (the head's align_corners)."""
        out = self.decode_head(self.backbone(img)[3])
        return F.interpolate(out, img.shape[2:], mode="bilinear", align_corners=self.align_corners)


def randomize_torch_batch_norms(module, generator):
    """Random BatchNorm statistics and affine parameters, so a conversion that drops or swaps one shows."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=generator) + 0.5
            m.bias.data = torch.randn(c, generator=generator) * 0.1
            m.running_mean = torch.randn(c, generator=generator) * 0.1
            m.running_var = torch.rand(c, generator=generator) * 1.5 + 0.5


def randomize(module, seed):
    """Random weights (torch's initialisers) and random BatchNorm statistics and affine parameters, eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
    randomize_torch_batch_norms(module, torch.Generator().manual_seed(seed))
    return module.eval()


def save_semseg(model, path):
    """Writes `model`'s weights as semseg's tool/train.py saves them: {"state_dict": DataParallel's "module." keys}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)


def load_semseg(path, classes=19, width=64):
    """The SemsegPSPNet-50 (no aux head) of a save_semseg file, in eval mode."""
    state = torch.load(path, weights_only=True)["state_dict"]
    model = SemsegPSPNet(50, classes=classes, width=width, aux=False)
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def segment(model, rgb, mean, std, bfloat16=False):
    """What a semseg user runs on one image at one scale: uint8 [H, W, 3] RGB -> class map [H, W] int64 (NumPy).

    Normalised with mean, std (3 floats each: data.normalization's, passed in so that this module imports
    no TensorFlow); bfloat16: the forward pass under torch.autocast("cpu", dtype=torch.bfloat16).
    """
    image = torch.tensor(rgb).permute(2, 0, 1)[None].float()  # a copy: PIL arrays are read-only
    image = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        logits = model(image)
    return logits.argmax(1)[0].numpy()
