"""Draw one synthetic State Farm frame: a seated driver seen from the passenger side, driver on the left.

The class is in the pose (where the hands are, what they hold, where the head
looks); the driver is in everything else, and that everything else is what an
ImageNet network sees first, as in the real photos: a patterned shirt, a
textured seat, sunlit scenery through the window, glasses, lighting, the camera
placement. Drivers share a few cars, as State Farm's drivers did. Frames of one
driver and class are a "take", a short video: the movement runs on from frame
to frame and the scenery drifts past, so neighbouring frames are near-duplicates
(a random split leaks) and a test image's nearest neighbours are mostly its own
take (test-neighbour smoothing helps). Geometry is laid out in a 640x480 design
space (the wheel at its left), mapped through the driver's camera and mirrored at
the end, so a frame has the real photos' geometry: the wheel at the right, the
driver left of centre facing it, the radio low on the left. The regions that
crop models look at (pipeline/views/augment.py's REGIONS) rely on that.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

DESIGN_W, DESIGN_H = 640.0, 480.0
WHEEL_CENTRE, WHEEL_NEAR, WHEEL_FAR = (0.245, 0.56), (0.275, 0.50), (0.225, 0.60)
RADIO = (0.2, 0.71)  # below the wheel: in the mirrored frame low on the right, where real photos have it
FOCUS = (0.45, 0.5)  # the design point the camera centres: the driver, as State Farm's cameras framed them
TRANSITIONS = 0.15  # the share of a take's frames caught on the way into or out of the pose
SHIRT_KEY, SEAT_KEY = (1, 254, 3), (2, 253, 4)  # drawn in these colours, then filled with the fabric's pattern


@dataclass(frozen=True)
class DriverLook:
    """Everything about one driver and their car that stays fixed across their frames."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    hair_style: int  # 0 short, 1 long, 2 bald, 3 cap
    shirt: tuple[int, int, int]
    seat: tuple[int, int, int]
    interior: tuple[int, int, int]
    outside: tuple[int, int, int]
    cup: tuple[int, int, int]
    cast: tuple[float, float, float]
    brightness: float
    contrast: float
    sharpness: float  # the frame is drawn at this fraction of full size, then upscaled: focus and optics
    cam_dx: float
    cam_dy: float
    cam_scale: float
    cam_rot: float  # degrees
    body_scale: float
    habit: tuple[float, float]  # how this driver tends to hold their hands, offset in design units
    yaw_bias: float
    shirt_stripes: tuple[int, int, int]  # the pattern's second colour
    pattern: int  # 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks
    stripe_period: float  # pixels at 640x480
    seat_grain: int  # seed of the seat fabric's texture
    glasses: bool
    light: tuple[float, float]  # sunlight: direction (radians) and strength of the brightness gradient
    scenery: int  # seed of what passes by the window


@dataclass(frozen=True)
class Take:
    """One driver's video of one class: where the movement starts and ends, and how the hands wander."""

    start: float  # how far into the pose, at the first frame and the last
    end: float
    drift: tuple[float, float, float, float]  # hands' wander: amplitude x, amplitude y, phase, turns per take
    yaw_drift: float
    road: float  # where along the road the take was filmed: what the window shows
    light: float  # the take's own brightness (clouds, the hour)
    tint: tuple[float, float, float]  # and its colour of light
    camera: tuple[float, float]  # where the camera sat for this take (it was remounted between takes)


@dataclass(frozen=True)
class Pose:
    near_hand: tuple[float, float]  # the driver's right hand, nearer the camera
    far_hand: tuple[float, float]
    yaw: float  # 0 looks ahead (left in design space, right in the mirrored frame), 1 at the camera/passenger
    pitch: float  # positive looks down
    lean: float
    near_prop: str | None = None  # "phone", "cup"
    far_prop: str | None = None
    mouth_open: bool = False


SAFE = Pose(WHEEL_NEAR, WHEEL_FAR, yaw=0.0, pitch=0.0, lean=0.0)
CLASS_POSES = {
    "c0": SAFE,
    "c1": Pose((0.405, 0.665), WHEEL_FAR, 0.1, 0.8, 0.0, near_prop="phone"),
    "c2": Pose((0.43, 0.36), WHEEL_FAR, 0.0, 0.0, 0.0, near_prop="phone"),
    "c3": Pose(WHEEL_NEAR, (0.36, 0.645), 0.1, 0.8, 0.0, far_prop="phone"),
    "c4": Pose(WHEEL_NEAR, (0.375, 0.33), -0.1, 0.0, 0.0, far_prop="phone"),
    "c5": Pose(RADIO, WHEEL_FAR, 0.6, 0.35, 0.02),
    "c6": Pose((0.355, 0.395), WHEEL_FAR, 0.0, -0.3, 0.0, near_prop="cup"),
    "c7": Pose((0.75, 0.40), WHEEL_FAR, 0.9, 0.0, 0.045),
    "c8": Pose((0.43, 0.245), (0.37, 0.31), 0.3, -0.1, 0.0),
    "c9": Pose(WHEEL_NEAR, WHEEL_FAR, 1.0, 0.0, 0.0, mouth_open=True),
}


def _colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


# The cars the drivers sit in (interior, seat): a few, shared, as in State Farm's photos.
CARS = (((70, 72, 78), (45, 45, 50)), ((150, 140, 125), (105, 95, 85)), ((40, 44, 60), (30, 30, 36)),
        ((120, 118, 112), (80, 80, 84)))


def random_look(rng: np.random.Generator) -> DriverLook:
    skin_tones = [(255, 224, 196), (234, 192, 160), (198, 144, 108), (160, 110, 75), (110, 72, 48), (80, 52, 36)]
    skin = np.array(skin_tones[rng.integers(len(skin_tones))]) + rng.integers(-12, 12, size=3)
    interior, seat = CARS[int(rng.integers(len(CARS)))]
    return DriverLook(
        skin=tuple(int(v) for v in np.clip(skin, 0, 255)),
        hair=_colour(rng, 10, 200),
        hair_style=int(rng.integers(4)),
        shirt=_colour(rng, 20, 240),
        seat=tuple(int(np.clip(c + rng.integers(-10, 10), 0, 255)) for c in seat),
        interior=tuple(int(np.clip(c + rng.integers(-10, 10), 0, 255)) for c in interior),
        outside=_colour(rng, 170, 256),
        cup=_colour(rng, 30, 256),
        cast=tuple(float(v) for v in rng.uniform(0.85, 1.15, size=3)),
        brightness=float(rng.uniform(-30, 30)),
        contrast=float(rng.uniform(0.7, 1.2)),
        sharpness=float(rng.uniform(0.5, 1.0)),
        cam_dx=float(rng.uniform(-0.05, 0.05)),
        cam_dy=float(rng.uniform(-0.04, 0.04)),
        cam_scale=float(rng.uniform(1.3, 1.6)),
        cam_rot=float(rng.uniform(-5, 5)),
        body_scale=float(rng.uniform(0.9, 1.1)),
        habit=(float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.025, 0.025))),
        yaw_bias=float(rng.uniform(-0.15, 0.15)),
        shirt_stripes=_colour(rng, 20, 240),
        pattern=int(rng.integers(4)),
        stripe_period=float(rng.uniform(7, 22)),
        seat_grain=int(rng.integers(2**31)),
        glasses=bool(rng.random() < 0.35),
        light=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.1, 0.45))),
        scenery=int(rng.integers(2**31)),
    )


def random_take(rng: np.random.Generator) -> Take:
    """A take starts part-way into the movement and runs on (or back); the hands wander a little throughout."""
    start, end = rng.uniform(0.6, 1.0, size=2)
    return Take(start=float(start), end=float(end),
                drift=(float(rng.uniform(0.01, 0.03)), float(rng.uniform(0.01, 0.03)),
                       float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.3, 1.0))),
                yaw_drift=float(rng.uniform(-0.1, 0.1)), road=float(rng.uniform(0, 1)),
                light=float(rng.uniform(-25, 25)), tint=tuple(float(v) for v in rng.uniform(0.93, 1.07, size=3)),
                camera=(float(rng.normal(0, 0.02)), float(rng.normal(0, 0.02))))


def frame_pose(classname: str, look: DriverLook, take: Take, time: float, rng: np.random.Generator,
               transitions: float = TRANSITIONS) -> Pose:
    """The class pose at ``time`` (0 = the take's first frame, 1 = its last), in this driver's habit, with a
    little frame-to-frame jitter; a ``transitions`` share of frames is caught on the way into or out of it."""
    target = CLASS_POSES[classname]
    amount = 1.0 if classname == "c0" else take.start + (take.end - take.start) * time
    if rng.random() < transitions:  # caught on the way into or out of the pose: it looks like safe driving
        amount *= rng.uniform(0.0, 0.4)
    wave = 2 * math.pi * take.drift[3] * time + take.drift[2]
    wander = (take.drift[0] * math.sin(wave), take.drift[1] * math.cos(wave))

    def hand(safe: tuple[float, float], goal: tuple[float, float]) -> tuple[float, float]:
        x = safe[0] + amount * (goal[0] - safe[0]) + look.habit[0] + wander[0] + rng.normal(0, 0.012)
        y = safe[1] + amount * (goal[1] - safe[1]) + look.habit[1] + wander[1] + rng.normal(0, 0.012)
        return (x, y)

    return replace(
        target,
        near_hand=hand(SAFE.near_hand, target.near_hand),
        far_hand=hand(SAFE.far_hand, target.far_hand),
        yaw=float(np.clip(amount * target.yaw + look.yaw_bias + take.yaw_drift * time + rng.normal(0, 0.06),
                          -0.3, 1.1)),
        pitch=amount * target.pitch + rng.normal(0, 0.06),
    )


class _Canvas:
    """Maps design coordinates (0..1) through the driver's camera onto the output image."""

    def __init__(self, look: DriverLook, width: int, height: int, shake: tuple[float, float]):
        self.image = Image.new("RGB", (width, height), look.interior)
        self.draw = ImageDraw.Draw(self.image)
        self.sx, self.sy = width / DESIGN_W * look.cam_scale, height / DESIGN_H * look.cam_scale
        self.ox = (0.5 + look.cam_dx + shake[0]) * width
        self.oy = (0.5 + look.cam_dy + shake[1]) * height
        self.cos, self.sin = math.cos(math.radians(look.cam_rot)), math.sin(math.radians(look.cam_rot))
        self.unit = width / DESIGN_W * look.cam_scale

    def xy(self, u: float, v: float) -> tuple[float, float]:
        x, y = (u - FOCUS[0]) * DESIGN_W, (v - FOCUS[1]) * DESIGN_H
        x, y = x * self.cos - y * self.sin, x * self.sin + y * self.cos
        return (self.ox + x * self.sx, self.oy + y * self.sy)

    def polygon(self, points, fill) -> None:
        self.draw.polygon([self.xy(u, v) for u, v in points], fill=fill)

    def line(self, points, fill, width: float) -> None:
        self.draw.line([self.xy(u, v) for u, v in points], fill=fill, width=max(1, round(width * self.unit)), joint="curve")

    def ellipse(self, centre, rx: float, ry: float, fill=None, outline=None, width: float = 1) -> None:
        cx, cy = self.xy(*centre)
        rx, ry = rx * DESIGN_W * self.sx, ry * DESIGN_H * self.sy
        self.draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill, outline=outline,
                          width=max(1, round(width * self.unit)))


def _elbow(shoulder, hand, upper: float, fore: float) -> tuple[float, float]:
    """Two-link inverse kinematics in design pixels; elbows hang downwards."""
    sx, sy, hx, hy = shoulder[0] * DESIGN_W, shoulder[1] * DESIGN_H, hand[0] * DESIGN_W, hand[1] * DESIGN_H
    dx, dy = hx - sx, hy - sy
    dist = float(np.clip(math.hypot(dx, dy), abs(upper - fore) + 1e-3, upper + fore - 1e-3))
    base = math.atan2(dy, dx)
    bend = math.acos(np.clip((upper**2 + dist**2 - fore**2) / (2 * upper * dist), -1, 1))
    options = [(sx + upper * math.cos(base + s * bend), sy + upper * math.sin(base + s * bend)) for s in (1, -1)]
    ex, ey = max(options, key=lambda p: p[1])
    return (ex / DESIGN_W, ey / DESIGN_H)


def _arm(canvas: _Canvas, look: DriverLook, shoulder, hand, prop: str | None) -> None:
    upper, fore = 100 * look.body_scale, 95 * look.body_scale
    elbow = _elbow(shoulder, hand, upper, fore)
    canvas.line([shoulder, elbow], SHIRT_KEY, 22 * look.body_scale)
    canvas.line([elbow, hand], look.skin, 15 * look.body_scale)
    if prop == "phone":
        canvas.polygon([(hand[0] - 0.012, hand[1] - 0.045), (hand[0] + 0.012, hand[1] - 0.045),
                        (hand[0] + 0.012, hand[1] + 0.02), (hand[0] - 0.012, hand[1] + 0.02)], (25, 25, 30))
        canvas.polygon([(hand[0] - 0.008, hand[1] - 0.04), (hand[0] + 0.008, hand[1] - 0.04),
                        (hand[0] + 0.008, hand[1] - 0.0), (hand[0] - 0.008, hand[1] - 0.0)], (120, 190, 255))
    elif prop == "cup":
        canvas.polygon([(hand[0] - 0.02, hand[1] - 0.06), (hand[0] + 0.02, hand[1] - 0.06),
                        (hand[0] + 0.016, hand[1] + 0.03), (hand[0] - 0.016, hand[1] + 0.03)], look.cup)
    canvas.ellipse(hand, 0.018 * look.body_scale, 0.026 * look.body_scale, fill=look.skin)


def _head(canvas: _Canvas, look: DriverLook, pose: Pose, centre) -> None:
    r = 0.062 * look.body_scale
    cx, cy = centre
    if look.hair_style == 1:  # long hair falls behind the head, drawn first
        canvas.polygon([(cx - 0.01, cy - r), (cx + r * 1.1, cy - r * 0.5), (cx + r * 1.2, cy + r * 2.2),
                        (cx + 0.005, cy + r * 1.6)], look.hair)
    canvas.ellipse(centre, r * 0.9, r * 1.1 * DESIGN_W / DESIGN_H, fill=look.skin)
    if look.hair_style in (0, 1):
        canvas.ellipse((cx + r * 0.25, cy - r * 0.85), r * 0.75, r * 0.55, fill=look.hair)
    elif look.hair_style == 3:
        canvas.ellipse((cx, cy - r * 0.95), r * 0.9, r * 0.5, fill=look.hair)
        canvas.line([(cx - r * 1.5, cy - r * 0.6), (cx, cy - r * 0.6)], look.hair, 6)
    eye_y = cy - r * 0.15 + pose.pitch * r * 0.45
    eyes = [cx + r * (-0.65 + 0.55 * pose.yaw)]
    if pose.yaw > 0.35:
        eyes.append(cx + r * (-0.65 + 1.25 * pose.yaw))
    for ex in eyes:
        canvas.ellipse((ex, eye_y), r * 0.11, r * 0.13, fill=(20, 20, 20))
        if look.glasses:
            canvas.ellipse((ex, eye_y), r * 0.24, r * 0.2, outline=(15, 15, 15), width=2)
    if look.glasses:  # the arm of the glasses, back to the ear
        canvas.line([(eyes[0] + r * 0.24, eye_y), (cx + r * 0.55, eye_y + r * 0.05)], (15, 15, 15), 2)
    mouth_x = cx + r * (-0.6 + 0.75 * pose.yaw)
    mouth_y = eye_y + r * 0.75
    if pose.mouth_open:
        canvas.ellipse((mouth_x, mouth_y), r * 0.16, r * 0.16, fill=(90, 20, 20))
    else:
        canvas.line([(mouth_x - r * 0.15, mouth_y), (mouth_x + r * 0.15, mouth_y)], (120, 50, 50), 3)


def _scenery(canvas: _Canvas, look: DriverLook, road: float) -> None:
    """The sky and what passes by the side window at ``road`` (along this driver's route): trees and buildings."""
    canvas.polygon([(-0.3, -0.3), (0.66, -0.3), (0.58, 0.40), (-0.3, 0.45)], look.outside)
    rng = np.random.default_rng(look.scenery)
    for _ in range(7):
        u = (rng.uniform(-0.3, 0.7) - road + 0.3) % 1.0 - 0.3
        v, size = rng.uniform(0.0, 0.35), rng.uniform(0.04, 0.12)
        if rng.random() < 0.5:  # a tree
            canvas.ellipse((u, v), size * 0.6, size, fill=_colour(rng, 20, 110))
        else:  # a building
            canvas.polygon([(u, v - size * 2), (u + size, v - size * 2), (u + size, 0.45), (u, 0.45)],
                           _colour(rng, 90, 200))


@functools.lru_cache(maxsize=64)
def _fabrics(look: DriverLook, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shirt pattern, seat texture, lighting gradient) at this size: the same on every frame of a driver."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    period = look.stripe_period * width / DESIGN_W
    rows, columns = (y / period) % 1 < 0.5, (x / period) % 1 < 0.5
    stripes = {0: np.zeros_like(rows), 1: rows, 2: columns, 3: rows ^ columns}[look.pattern]
    shirt = np.where(stripes[..., None], np.float32(look.shirt_stripes), np.float32(look.shirt))
    coarse = np.random.default_rng(look.seat_grain).normal(0, 1, ((height + 15) // 16, (width + 15) // 16))
    blotches = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BILINEAR))
    seat = np.float32(look.seat) * (1 + 0.18 * blotches[..., None])
    angle, strength = look.light
    light = 1 + strength * ((x / width - 0.5) * math.cos(angle) + (y / height - 0.5) * math.sin(angle))
    return shirt, seat, light[..., None]


def draw_frame(look: DriverLook, pose: Pose, take: Take, time: float, size: tuple[int, int],
               rng: np.random.Generator) -> Image.Image:
    """One frame (``size``: width, height) of the driver in this pose, ``time`` into the take: the scenery
    drifts by as the car drives on."""
    width, height = size
    draw_w, draw_h = max(16, round(width * look.sharpness)), max(12, round(height * look.sharpness))
    canvas = _Canvas(look, draw_w, draw_h, shake=tuple(np.add(take.camera, rng.normal(0, 0.003, size=2))))
    dark = tuple(int(c * 0.55) for c in look.interior)
    _scenery(canvas, look, take.road + 0.25 * time)
    canvas.polygon([(0.58, -0.3), (0.68, -0.3), (0.62, 0.45), (0.56, 0.45)], dark)  # B-pillar
    canvas.polygon([(-0.3, 0.52), (0.2, 0.48), (0.23, 1.3), (-0.3, 1.3)], dark)  # dashboard
    canvas.polygon([(0.56, 0.6), (0.7, 0.6), (0.72, 1.3), (0.55, 1.3)], dark)  # centre console
    canvas.polygon([(0.155, 0.67), (0.245, 0.67), (0.245, 0.75), (0.155, 0.75)], (30, 30, 35))  # radio
    canvas.polygon([(0.17, 0.685), (0.23, 0.685), (0.23, 0.71), (0.17, 0.71)], (90, 220, 160))
    canvas.polygon([(0.8, 0.35), (1.3, 0.35), (1.3, 1.3), (0.78, 1.3)], SEAT_KEY)  # rear seat
    lean = pose.lean
    canvas.polygon([(0.47, 0.32), (0.6, 0.34), (0.62, 0.95), (0.45, 0.95)], SEAT_KEY)  # driver's seat back
    canvas.ellipse((0.54, 0.27), 0.045, 0.06, fill=SEAT_KEY)  # headrest
    near_shoulder, far_shoulder = (0.465 + lean, 0.50), (0.395 + lean, 0.49)
    _arm(canvas, look, far_shoulder, pose.far_hand, pose.far_prop)
    canvas.polygon([(far_shoulder[0] - 0.01, 0.47), (near_shoulder[0] + 0.025, 0.475), (0.53, 0.9), (0.36, 0.9)],
                   SHIRT_KEY)
    canvas.line([(0.43 + lean, 0.47), (0.425 + lean * 0.8, 0.40)], look.skin, 16 * look.body_scale)  # neck
    _head(canvas, look, pose, (0.42 + lean * 0.8, 0.335 + 0.01 * pose.pitch))
    canvas.ellipse(WHEEL_CENTRE, 0.035, 0.12, outline=(30, 30, 30), width=9)  # wheel seen edge-on
    _arm(canvas, look, near_shoulder, pose.near_hand, pose.near_prop)

    drawn = np.asarray(canvas.image)
    shirt, seat, light = _fabrics(look, draw_h, draw_w)
    pixels = np.where((drawn == SHIRT_KEY).all(-1, keepdims=True), shirt, drawn.astype(np.float32))
    pixels = np.where((drawn == SEAT_KEY).all(-1, keepdims=True), seat, pixels) * light
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = image.resize((width, height), Image.BILINEAR) if (draw_w, draw_h) != (width, height) else image
    pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - 128) * look.contrast + 128 + look.brightness + take.light + rng.normal(0, 4)  # + flicker
    # Sensor noise at half resolution: 2x2 grain, a quarter of the random numbers.
    grain = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32) * 5
    grain = grain.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    pixels = pixels * np.asarray(look.cast, dtype=np.float32) * np.asarray(take.tint, dtype=np.float32) + grain
    # Mirrored: design space has the wheel at the left, State Farm's camera sees it at the right.
    return Image.fromarray(np.ascontiguousarray(np.clip(pixels, 0, 255).astype(np.uint8)[:, ::-1]))
