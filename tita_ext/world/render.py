"""Drawing scenes: flat, aliased shapes on a plain background (exact colours, no blending).

    cube  filled square          box   square outline
    ball  filled circle          ring  circle outline
    cone  filled triangle        star  filled five-pointed star
"""

from __future__ import annotations

import math
from typing import Callable

from PIL import Image, ImageDraw

from .scenes import BACKGROUND, COLORS, Scene, SceneObject

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]


def _outline_width(size: int) -> int:
    """Stroke of the outline shapes: thick enough to survive downscaling to 32 pixels."""
    return max(2, size // 5)


def _cube(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)


def _box(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=_outline_width(x1 - x0))


def _ball(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=color)


def _ring(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    draw.ellipse((x0, y0, x1 - 1, y1 - 1), outline=color, width=_outline_width(x1 - x0))


def _cone(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1 - 1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=color)


def _star(draw: ImageDraw.ImageDraw, box: Box, color: RGB) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    outer = (x1 - x0 - 1) / 2
    inner = outer * 0.45
    points = []
    for i in range(10):  # alternate outer and inner vertices, first one pointing up
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(points, fill=color)


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, Box, RGB], None]] = {
    "cube": _cube, "box": _box, "ball": _ball, "ring": _ring, "cone": _cone, "star": _star,
}


def draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    """Draw one object inside its bounding box."""
    DRAWERS[obj.shape](draw, obj.box, COLORS[obj.color])


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB PIL image of `scene.image_size` pixels square (a pure function)."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_object(draw, obj)
    return image


__all__ = ["render", "draw_object", "DRAWERS"]
