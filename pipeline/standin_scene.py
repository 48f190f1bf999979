"""Draw one synthetic State Farm frame: a seated driver seen from the passenger side, driver on the left.

The class is in the pose (where the hands are, what they hold, where the head
looks); the driver is in everything else (skin, hair, clothes, seat, interior,
camera placement, lighting), which is what makes unseen drivers hard. Geometry
is laid out in a 640x480 design space and mapped through the driver's camera.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

DESIGN_W, DESIGN_H = 640.0, 480.0
WHEEL_CENTRE, WHEEL_NEAR, WHEEL_FAR = (0.245, 0.56), (0.275, 0.50), (0.225, 0.60)
RADIO = (0.625, 0.69)


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


@dataclass(frozen=True)
class Pose:
    near_hand: tuple[float, float]  # the driver's right hand, nearer the camera
    far_hand: tuple[float, float]
    yaw: float  # 0 looks ahead (left of frame), 1 looks at the camera/passenger
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


def random_look(rng: np.random.Generator) -> DriverLook:
    skin_tones = [(255, 224, 196), (234, 192, 160), (198, 144, 108), (160, 110, 75), (110, 72, 48), (80, 52, 36)]
    skin = np.array(skin_tones[rng.integers(len(skin_tones))]) + rng.integers(-12, 12, size=3)
    return DriverLook(
        skin=tuple(int(v) for v in np.clip(skin, 0, 255)),
        hair=_colour(rng, 10, 200),
        hair_style=int(rng.integers(4)),
        shirt=_colour(rng, 20, 240),
        seat=_colour(rng, 20, 120),
        interior=_colour(rng, 40, 170),
        outside=_colour(rng, 150, 256),
        cup=_colour(rng, 30, 256),
        cast=tuple(float(v) for v in rng.uniform(0.82, 1.18, size=3)),
        brightness=float(rng.uniform(-40, 40)),
        contrast=float(rng.uniform(0.65, 1.25)),
        sharpness=float(rng.uniform(0.45, 1.0)),
        cam_dx=float(rng.uniform(-0.07, 0.07)),
        cam_dy=float(rng.uniform(-0.06, 0.06)),
        cam_scale=float(rng.uniform(0.88, 1.15)),
        cam_rot=float(rng.uniform(-5, 5)),
        body_scale=float(rng.uniform(0.88, 1.12)),
        habit=(float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.025, 0.025))),
        yaw_bias=float(rng.uniform(-0.15, 0.15)),
    )


def frame_pose(classname: str, look: DriverLook, rng: np.random.Generator) -> Pose:
    """The class pose as one video frame catches it: part-way there, jittered, in this driver's habit."""
    target = CLASS_POSES[classname]
    amount = 1.0 if classname == "c0" else rng.uniform(0.7, 1.0)

    def hand(safe: tuple[float, float], goal: tuple[float, float]) -> tuple[float, float]:
        x = safe[0] + amount * (goal[0] - safe[0]) + look.habit[0] + rng.normal(0, 0.012)
        y = safe[1] + amount * (goal[1] - safe[1]) + look.habit[1] + rng.normal(0, 0.012)
        return (x, y)

    return replace(
        target,
        near_hand=hand(SAFE.near_hand, target.near_hand),
        far_hand=hand(SAFE.far_hand, target.far_hand),
        yaw=float(np.clip(amount * target.yaw + look.yaw_bias + rng.normal(0, 0.08), -0.3, 1.1)),
        pitch=amount * target.pitch + rng.normal(0, 0.08),
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
        x, y = (u - 0.5) * DESIGN_W, (v - 0.5) * DESIGN_H
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
    canvas.line([shoulder, elbow], look.shirt, 22 * look.body_scale)
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
    mouth_x = cx + r * (-0.6 + 0.75 * pose.yaw)
    mouth_y = eye_y + r * 0.75
    if pose.mouth_open:
        canvas.ellipse((mouth_x, mouth_y), r * 0.16, r * 0.16, fill=(90, 20, 20))
    else:
        canvas.line([(mouth_x - r * 0.15, mouth_y), (mouth_x + r * 0.15, mouth_y)], (120, 50, 50), 3)


def draw_frame(look: DriverLook, pose: Pose, width: int, height: int, rng: np.random.Generator) -> Image.Image:
    draw_w, draw_h = max(16, round(width * look.sharpness)), max(12, round(height * look.sharpness))
    canvas = _Canvas(look, draw_w, draw_h, shake=tuple(rng.normal(0, 0.006, size=2)))
    dark = tuple(int(c * 0.55) for c in look.interior)
    canvas.polygon([(-0.3, -0.3), (0.66, -0.3), (0.58, 0.40), (-0.3, 0.45)], look.outside)  # side window
    canvas.polygon([(0.58, -0.3), (0.68, -0.3), (0.62, 0.45), (0.56, 0.45)], dark)  # B-pillar
    canvas.polygon([(-0.3, 0.52), (0.2, 0.48), (0.23, 1.3), (-0.3, 1.3)], dark)  # dashboard
    canvas.polygon([(0.56, 0.6), (0.7, 0.6), (0.72, 1.3), (0.55, 1.3)], dark)  # centre console
    canvas.polygon([(0.58, 0.65), (0.67, 0.65), (0.67, 0.73), (0.58, 0.73)], (30, 30, 35))  # radio
    canvas.polygon([(0.595, 0.665), (0.655, 0.665), (0.655, 0.69), (0.595, 0.69)], (90, 220, 160))
    canvas.polygon([(0.8, 0.35), (1.3, 0.35), (1.3, 1.3), (0.78, 1.3)], look.seat)  # rear seat
    lean = pose.lean
    canvas.polygon([(0.47, 0.32), (0.6, 0.34), (0.62, 0.95), (0.45, 0.95)], look.seat)  # driver's seat back
    canvas.ellipse((0.54, 0.27), 0.045, 0.06, fill=look.seat)  # headrest
    near_shoulder, far_shoulder = (0.465 + lean, 0.50), (0.395 + lean, 0.49)
    _arm(canvas, look, far_shoulder, pose.far_hand, pose.far_prop)
    canvas.polygon([(far_shoulder[0] - 0.01, 0.47), (near_shoulder[0] + 0.025, 0.475), (0.53, 0.9), (0.36, 0.9)],
                   look.shirt)
    canvas.line([(0.43 + lean, 0.47), (0.425 + lean * 0.8, 0.40)], look.skin, 16 * look.body_scale)  # neck
    _head(canvas, look, pose, (0.42 + lean * 0.8, 0.335 + 0.01 * pose.pitch))
    canvas.ellipse(WHEEL_CENTRE, 0.035, 0.12, outline=(30, 30, 30), width=9)  # wheel seen edge-on
    _arm(canvas, look, near_shoulder, pose.near_hand, pose.near_prop)

    image = canvas.image.resize((width, height), Image.BILINEAR) if (draw_w, draw_h) != (width, height) else canvas.image
    pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - 128) * look.contrast + 128 + look.brightness + rng.normal(0, 6)  # flicker per frame
    # Sensor noise at half resolution: 2x2 grain, a quarter of the random numbers.
    grain = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32) * 5
    grain = grain.repeat(2, axis=0).repeat(2, axis=1)[:height, :width]
    pixels = pixels * np.asarray(look.cast, dtype=np.float32) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
