"""A small synthetic dataset in the official Cityscapes (fine) layout.

    write_cityscapes_sample(out_dir, num_train=24, num_val=8, size=(256, 512), seed=0)

writes, for each split in (train, val) and id <city>_<seq:06d>_<frame:06d>,

    out_dir/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png         RGB, 8 bit
    out_dir/gtFine/<split>/<city>/<id>_gtFine_labelIds.png          labelIds, 8 bit
    out_dir/gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png     trainIds (255 ignore), 8 bit
    out_dir/gtFine/<split>/<city>/<id>_gtFine_color.png             official colours, RGBA
    out_dir/gtFine/<split>/<city>/<id>_gtFine_instanceIds.png       16 bit, see below

encoded as the official preparation scripts write them: the label images are
drawn polygon by polygon (later objects occlude earlier ones), the colour image
is RGBA, and instanceIds hold labelId * 1000 + k for the k-th instance (from 0)
of a class that has instances (person, rider, car, truck, bus, bicycle, ...),
the plain labelId everywhere else.

Scenes are streets seen from a car: sky and buildings above a horizon, a road
narrowing towards a vanishing point with sidewalks beside it, terrain, trees,
a fence or wall, poles carrying traffic signs and lights, cars, trucks and buses
on the road, people on the sidewalks, riders on bicycles or motorcycles, and
void regions (ego vehicle at the bottom, static and dynamic clutter, unlabeled
patches) that training must ignore. Objects shrink towards the horizon, so
every class appears at several positions and scales. Each class is painted with
its own base colour and texture (stripes, tiles, windows, blotches, gradients;
see _STYLES), then every object gets a colour shift, the whole image a random
brightness and every pixel noise: learnable by a small network, not by a
per-pixel colour lookup. Deterministic for a given seed and size.
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from data.cityscapes import LABELS, to_train_ids
from data.errors import OutputExistsError

CITIES = ("aachen", "bochum", "frankfurt")

_ID = {label.name: label.id for label in LABELS if label.id >= 0}
# The official classes whose objects are numbered in instanceIds.
_HAS_INSTANCES = {_ID[name] for name in
                  ("person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle")}
# labelId -> official RGB colour, for the _color.png files.
_COLOR_TABLE = np.zeros((256, 3), np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        _COLOR_TABLE[_label.id] = _label.color

# labelId -> (base RGB, texture). Colours are chosen to be distinct, not the
# official palette, so that the colour image is not a copy of the picture.
_STYLES = {
    _ID["unlabeled"]: ((150, 150, 150), "speckle"),
    _ID["ego vehicle"]: ((45, 45, 50), "vgradient"),
    _ID["static"]: ((125, 100, 60), "speckle"),
    _ID["dynamic"]: ((120, 80, 10), "checker"),
    _ID["road"]: ((110, 90, 120), "speckle"),
    _ID["sidewalk"]: ((205, 150, 190), "tiles"),
    _ID["building"]: ((125, 110, 95), "windows"),
    _ID["wall"]: ((175, 165, 110), "bricks"),
    _ID["fence"]: ((175, 125, 115), "lattice"),
    _ID["pole"]: ((235, 235, 240), "hstripes"),
    _ID["traffic light"]: ((245, 160, 20), "checker"),
    _ID["traffic sign"]: ((235, 230, 30), "plain"),
    _ID["vegetation"]: ((60, 140, 40), "blotches"),
    _ID["terrain"]: ((165, 220, 120), "hstripes"),
    _ID["sky"]: ((95, 155, 225), "vgradient"),
    _ID["person"]: ((220, 30, 70), "hstripes"),
    _ID["rider"]: ((250, 95, 20), "checker"),
    _ID["car"]: ((30, 40, 175), "vstripes"),
    _ID["truck"]: ((20, 95, 90), "tiles"),
    _ID["bus"]: ((0, 135, 165), "windows"),
    _ID["motorcycle"]: ((145, 60, 230), "checker"),
    _ID["bicycle"]: ((130, 20, 40), "plain"),
}


def write_cityscapes_sample(out_dir, *, num_train, num_val, size, seed):
    """Writes the sample (layout in the module doc); returns nothing.

    out_dir: folder, created if missing; it must not already hold leftImg8bit/
    or gtFine/ (data.errors.OutputExistsError, one line naming the folder), so a sample never
    overwrites a dataset. num_train, num_val: images per split (>= 1).
    size: (height, width) of every image. seed: int.
    """
    for sub in ("leftImg8bit", "gtFine"):
        if os.path.exists(os.path.join(out_dir, sub)):
            raise OutputExistsError(
                f"{out_dir}: already holds {sub}/ (a Cityscapes sample or dataset); choose an empty or new folder"
            )
    height, width = size
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        for index in range(count):
            city = CITIES[index % len(CITIES)]
            # Real ids are <city>_<sequence>_<frame>; frame 19 is the annotated one.
            stem = f"{city}_{index // len(CITIES):06d}_{19:06d}"
            image, label_ids, instance_ids = draw_scene(rng, height, width)
            image_dir = os.path.join(out_dir, "leftImg8bit", split, city)
            label_dir = os.path.join(out_dir, "gtFine", split, city)
            os.makedirs(image_dir, exist_ok=True)
            os.makedirs(label_dir, exist_ok=True)
            Image.fromarray(image).save(os.path.join(image_dir, f"{stem}_leftImg8bit.png"))
            gt = os.path.join(label_dir, f"{stem}_gtFine_")
            Image.fromarray(label_ids).save(gt + "labelIds.png")
            Image.fromarray(to_train_ids(label_ids)).save(gt + "labelTrainIds.png")
            Image.fromarray(_COLOR_TABLE[label_ids]).convert("RGBA").save(gt + "color.png")
            Image.fromarray(instance_ids.astype(np.uint16)).save(gt + "instanceIds.png")


class _Canvas:
    """Label, instance and segment images drawn together, shape by shape, as polygons are in the official tools.

    Each shape gets its own segment number, so the renderer can shift the colour
    of one object (one building, one car) without a class-wide colour.
    """

    def __init__(self, height, width):
        self.label = Image.new("L", (width, height), _ID["unlabeled"])
        self.instance = Image.new("I", (width, height), _ID["unlabeled"])
        self.segment = Image.new("I", (width, height), 0)
        self._draws = [ImageDraw.Draw(image) for image in (self.label, self.instance, self.segment)]
        self._instances = {}
        self.num_segments = 1

    def new_instance(self, label_id):
        """The instanceIds value of the next object of `label_id`."""
        if label_id not in _HAS_INSTANCES:
            return label_id
        k = self._instances.get(label_id, 0)
        self._instances[label_id] = k + 1
        return label_id * 1000 + k

    def draw(self, kind, xy, label_id, instance=None):
        """kind: "polygon" [(x, y), ...], "rectangle" or "ellipse" [x0, y0, x1, y1] in pixels.

        Parts of one object (a car body and its cabin) share `instance`.
        """
        instance = self.new_instance(label_id) if instance is None else instance
        values = (label_id, instance, self.num_segments)
        self.num_segments += 1
        for draw, value in zip(self._draws, values):
            getattr(draw, kind)(xy, fill=value)
        return instance

    def arrays(self):
        return (np.asarray(self.label, np.uint8), np.asarray(self.instance, np.int32),
                np.asarray(self.segment, np.int32))


def draw_scene(rng, height, width):
    """One street scene.

    Returns image uint8 [H, W, 3] RGB, labelIds uint8 [H, W], instanceIds
    int32 [H, W] (labelId * 1000 + k for instance classes, else labelId).
    """
    canvas = _Canvas(height, width)
    H, W = float(height), float(width)
    horizon = H * rng.uniform(0.36, 0.5)
    vanish_x = W * rng.uniform(0.35, 0.65)

    # Sky, then a skyline of buildings with gaps, down to the horizon.
    canvas.draw("rectangle", [0, 0, W, horizon], _ID["sky"])
    x = -rng.uniform(0, 0.1) * W
    while x < W:
        span = rng.uniform(0.08, 0.25) * W
        if rng.random() < 0.8:
            top = max(horizon - rng.uniform(0.12, 0.4) * H, 0.02 * H)
            canvas.draw("rectangle", [x, top, x + span, horizon + 1], _ID["building"])
        x += span

    # Ground: terrain, then sidewalks and the road as trapezoids meeting near the vanishing point.
    canvas.draw("rectangle", [0, horizon, W, H], _ID["terrain"])
    road_half = W * rng.uniform(0.3, 0.55)
    walk = W * rng.uniform(0.12, 0.3)

    def edge(y, offset):
        """x of a line from near the vanishing point (at the horizon) to vanish_x + offset (at the bottom)."""
        depth = (y - horizon) / (H - horizon)
        return vanish_x + offset * (0.04 + 0.96 * depth)

    canvas.draw("polygon", [(edge(horizon, -road_half - walk), horizon), (edge(horizon, road_half + walk), horizon),
                            (edge(H, road_half + walk), H), (edge(H, -road_half - walk), H)], _ID["sidewalk"])
    canvas.draw("polygon", [(edge(horizon, -road_half), horizon), (edge(horizon, road_half), horizon),
                            (edge(H, road_half), H), (edge(H, -road_half), H)], _ID["road"])

    # A fence or wall receding along the outer edge of one sidewalk.
    if rng.random() < 0.85:
        side = rng.choice([-1.0, 1.0])
        outer = side * (road_half + walk)
        rise = rng.uniform(0.15, 0.35)
        bottom = H * rng.uniform(0.85, 1.0)
        canvas.draw("polygon", [(edge(horizon, outer), horizon), (edge(bottom, outer), bottom),
                                (edge(bottom, outer), bottom - rise * (bottom - horizon)),
                                (edge(horizon, outer), horizon - 0.01 * H)],
                    _ID["fence"] if rng.random() < 0.5 else _ID["wall"])

    # Trees: round crowns around the horizon, in front of buildings and terrain.
    for _ in range(rng.integers(1, 5)):
        cx = rng.uniform(0, W)
        cy = horizon + rng.uniform(-0.15, 0.1) * H
        r = rng.uniform(0.05, 0.14) * H
        canvas.draw("ellipse", [cx - 1.3 * r, cy - r, cx + 1.3 * r, cy + r], _ID["vegetation"])

    # Objects standing on the ground, drawn far to near so near ones occlude.
    def beside_road(low, high):
        """A random offset on either side, between road_half + low * walk and road_half + high * walk."""
        return rng.choice([-1.0, 1.0]) * rng.uniform(road_half + low * walk, road_half + high * walk)

    objects = []
    for _ in range(rng.integers(1, 4)):
        objects.append(("pole", beside_road(0.2, 0.8)))
    for _ in range(rng.integers(1, 5)):
        kind = rng.choice(["car", "car", "truck", "bus"])
        objects.append((kind, rng.uniform(-0.75, 0.75) * road_half))
    for _ in range(rng.integers(1, 4)):
        objects.append(("person", beside_road(0.1, 0.9)))
    for _ in range(rng.integers(0, 3)):
        objects.append(("rider", rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 0.95) * road_half))
    for _ in range(rng.integers(0, 3)):
        objects.append(("static", beside_road(0.3, 1.5)))
    if rng.random() < 0.4:
        objects.append(("dynamic", rng.uniform(-0.8, 0.8) * road_half))
    bases = horizon + (H - horizon) * rng.uniform(0.12, 0.95, size=len(objects))
    for index in np.argsort(bases):
        kind, offset = objects[index]
        y = bases[index]
        _draw_object(canvas, rng, kind, edge(y, offset), y, s=(y - horizon) / (H - horizon) * H)

    # Void: unlabeled patches and, in most images, the ego vehicle's bonnet.
    for _ in range(rng.integers(0, 3)):
        cx, cy, r = rng.uniform(0, W), rng.uniform(horizon, H), rng.uniform(0.02, 0.06) * H
        canvas.draw("polygon", [(cx - r, cy), (cx, cy - r), (cx + 1.5 * r, cy + 0.3 * r), (cx, cy + r)],
                    _ID["unlabeled"])
    if rng.random() < 0.7:
        top = H * rng.uniform(0.88, 0.95)
        canvas.draw("ellipse", [-0.2 * W, top, 1.2 * W, H + 2 * (H - top)], _ID["ego vehicle"])

    label_ids, instance_ids, segments = canvas.arrays()
    return _render(rng, label_ids, segments, canvas.num_segments), label_ids, instance_ids


def _draw_object(canvas, rng, kind, x, y, s):
    """Draws one object standing at (x, y); s: its scale in pixels (the image height at the bottom row)."""
    if kind == "pole":
        # Thick enough to survive a stride-8 network at the sample's 256x512.
        h, w = 0.7 * s, max(3.0, 0.05 * s)
        canvas.draw("rectangle", [x - w / 2, y - h, x + w / 2, y], _ID["pole"])
        if rng.random() < 0.5:
            box = 0.13 * s
            canvas.draw("rectangle", [x - 0.6 * box, y - h - 0.3 * box, x + 0.6 * box, y - h + 1.3 * box],
                        _ID["traffic light"])
        if rng.random() < 0.7:
            r = 0.09 * s
            cy = y - h + (0.35 if rng.random() < 0.5 else 0.15) * h
            shape = "ellipse" if rng.random() < 0.5 else "rectangle"
            canvas.draw(shape, [x - r, cy - r, x + r, cy + r], _ID["traffic sign"])
    elif kind in ("car", "truck", "bus"):
        w = s * {"car": rng.uniform(0.5, 0.65), "truck": rng.uniform(0.6, 0.75), "bus": rng.uniform(0.7, 0.85)}[kind]
        h = w * {"car": 0.45, "truck": 0.7, "bus": 0.65}[kind]
        instance = canvas.draw("rectangle", [x - w / 2, y - 0.6 * h, x + w / 2, y], _ID[kind])
        if kind == "car":  # a cabin narrower than the body
            canvas.draw("polygon", [(x - 0.4 * w, y - 0.6 * h), (x - 0.25 * w, y - h),
                                    (x + 0.25 * w, y - h), (x + 0.4 * w, y - 0.6 * h)], _ID[kind], instance)
        else:
            canvas.draw("rectangle", [x - w / 2, y - h, x + w / 2, y - 0.6 * h], _ID[kind], instance)
    elif kind == "person":
        h = s * rng.uniform(0.3, 0.42)
        w = 0.3 * h
        instance = canvas.draw("ellipse", [x - w / 2, y - 0.85 * h, x + w / 2, y], _ID["person"])
        canvas.draw("ellipse", [x - 0.2 * w, y - h, x + 0.2 * w, y - 0.78 * h], _ID["person"], instance)
    elif kind == "rider":
        # A bicycle or motorcycle (two wheels and a frame) with a rider on top.
        vehicle = _ID["bicycle"] if rng.random() < 0.6 else _ID["motorcycle"]
        r = s * 0.08
        instance = canvas.draw("ellipse", [x - 2.5 * r, y - 2 * r, x - 0.5 * r, y], vehicle)
        canvas.draw("ellipse", [x + 0.5 * r, y - 2 * r, x + 2.5 * r, y], vehicle, instance)
        canvas.draw("rectangle", [x - 1.5 * r, y - 1.6 * r, x + 1.5 * r, y - 0.8 * r], vehicle, instance)
        h = 4.5 * r
        canvas.draw("ellipse", [x - 0.6 * r, y - 1.2 * r - h, x + 0.6 * r, y - 1.2 * r], _ID["rider"])
    elif kind == "static":  # a bin or a bollard
        w, h = s * rng.uniform(0.04, 0.08), s * rng.uniform(0.06, 0.12)
        canvas.draw("rectangle", [x - w / 2, y - h, x + w / 2, y], _ID["static"])
    else:  # dynamic: a cart on the road
        w, h = s * 0.12, s * 0.08
        canvas.draw("rectangle", [x - w / 2, y - h, x + w / 2, y], _ID["dynamic"])


def _render(rng, label_ids, segments, num_segments):
    """The picture of a labelled scene: uint8 [H, W, 3].

    Class colour and texture, plus a colour shift per segment (object), a
    global brightness and per-pixel noise.
    """
    height, width = label_ids.shape
    # Texture periods grow with the image so a 1024x2048 sample looks like a 256x512 one.
    p = max(1, round(height / 256))
    shifts = rng.normal(0, 12, size=(num_segments, 3))
    image = np.zeros((height, width, 3), np.float32)
    for label_id in np.unique(label_ids):
        colour, texture = _STYLES[label_id]
        ys, xs = np.nonzero(label_ids == label_id)
        shade = _texture(rng, texture, ys, xs, p, height)
        base = np.asarray(colour, np.float32) + shifts[segments[ys, xs]]
        if label_id == _ID["unlabeled"]:  # no characteristic colour: anything goes
            base = rng.uniform(40, 220, size=(num_segments, 3))[segments[ys, xs]]
        image[ys, xs] = base * shade[:, None]
    image *= rng.uniform(0.7, 1.3)
    image += rng.normal(0, rng.uniform(4, 10), size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _texture(rng, kind, ys, xs, p, height):
    """Brightness factor (float32 [N], about 0.5..1.2) of `kind` at pixels (ys, xs); p: period unit in pixels."""
    if kind == "hstripes":
        return np.where((ys // (3 * p)) % 2 == 0, 1.0, 0.7).astype(np.float32)
    if kind == "vstripes":
        return np.where((xs // (3 * p)) % 2 == 0, 1.0, 0.65).astype(np.float32)
    if kind == "checker":
        return np.where((ys // (4 * p) + xs // (4 * p)) % 2 == 0, 1.0, 0.6).astype(np.float32)
    if kind == "tiles":
        lines = (ys % (8 * p) < p) | (xs % (8 * p) < p)
        return np.where(lines, 0.6, 1.0).astype(np.float32)
    if kind == "windows":
        window = (ys % (10 * p) >= 3 * p) & (ys % (10 * p) < 8 * p) & (xs % (8 * p) >= 2 * p) & (xs % (8 * p) < 6 * p)
        return np.where(window, 0.5, 1.0).astype(np.float32)
    if kind == "bricks":
        return np.where(ys % (5 * p) < p, 0.7, 1.0).astype(np.float32)
    if kind == "lattice":
        bars = ((xs + ys) % (6 * p) < 2 * p) | ((xs - ys) % (6 * p) < 2 * p)
        return np.where(bars, 1.0, 0.55).astype(np.float32)
    if kind == "vgradient":
        return (0.75 + 0.4 * ys / height).astype(np.float32)
    if kind == "blotches":
        phase = rng.uniform(0, 2 * np.pi, size=2)
        wave = np.sin(xs / (2.5 * p) + phase[0]) * np.sin(ys / (2.0 * p) + phase[1])
        return (0.85 + 0.25 * wave).astype(np.float32)
    if kind == "speckle":
        return rng.uniform(0.75, 1.05, size=ys.shape).astype(np.float32)
    return np.ones(ys.shape, np.float32)
