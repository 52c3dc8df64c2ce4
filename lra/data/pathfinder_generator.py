"""Pathfinder images: two marker circles, and the question whether one dashed path joins them.

What an image is
----------------
Pathfinder (Linsley et al., NeurIPS 2018; Kim*, Linsley* et al., ICLR 2020) shows curved contours
made of short line segments ("paddles") separated by small gaps, on a black background, with two
small white circles ("markers").  The label is 1 when the two markers sit at the two ends of the
same contour and 0 when they sit on two different contours.  LRA (Tay et al., ICLR 2021) uses the
"hard" setting, contour length 14, at 32x32 (Pathfinder) and 128x128 (Path-X).

This module re-implements the generative process of ``drewlinsley/pathfinder`` (``snakes2.py``
and ``snakes.py``), read for facts only, with the parameters that the LRA TFDS builder
(``lra_benchmarks/data/pathfinder.py``) lists for the released images:

1. Two target contours ("snakes") start from seed paddles whose tails are ``seed_distance`` apart;
   the first tail lies at least ``2 * seed_distance`` from every edge.  Each snake then grows to
   ``contour_length`` paddles, the two growing in turn, one paddle each.
2. Growing a snake: the next paddle starts ``2 * margin`` past the end of the previous one.  Its
   direction is drawn on a circle of radius ``paddle_length + margin`` around that gap (one
   candidate per pixel of arc) with weight ``cos(min(continuity * |turn|, pi/2))**2``, zero where
   the candidate end point is near anything already drawn.  A drawn paddle is kept when its
   exclusion zone (the stroke widened by ``margin``) overlaps nothing drawn before, the snake's
   own previous paddle excepted; after ``max_segment_trials`` rejected draws the snake fails
   (targets: the whole image is redrawn; distractors: that snake is retried, then dropped).
3. ``num_distractor_snakes`` distractor snakes of ``distractor_length`` paddles, then (with
   ``single_paddles``, off by default) single paddles, are placed at uniformly random free
   positions until the paddle budget of the original, ``int(150 * 123.5 / (7.5 + 13 m + 4 m^2))``
   paddles for margin ``m``, is used up or less than ``min_free_fraction`` of the image is free.
4. Label ``~ U{0, 1}``.  One marker sits on the first tail of a random target snake; the other on
   the last head of the same snake (label 1) or of the other snake (label 0).
5. Intensities: target paddles ``paddle_contrast * snake_contrast``, distractors ``snake_contrast``,
   markers 1, combined by maximum, then scaled so that the brightest pixel is 255 (the original
   saved its float images with ``scipy.misc.imsave``, which rescales min..max to 0..255).

Deliberate differences from the original (docs/pathfinder.md compares the two):

* Strokes are anti-aliased analytically (the exact coverage of a line of width ``thickness``
  under a one-pixel box filter, measured by distance to the segment, so ends are round) instead of
  drawn with Pillow at ``antialias_scale`` times the size and shrunk with a Lanczos filter; the
  exclusion zones are sharp pixel sets (distance <= thickness/2 + margin) instead of Lanczos-
  shrunk dilations thresholded at 0.3 / 0.9.
* Positions are continuous (the original rounds every end point up to whole pixels), and a free
  seed position is found by rejection sampling among free pixels (same distribution: uniform over
  the positions where the paddle fits) instead of a dilation of the whole mask per draw.
* A target snake that runs into a dead end backs out of it (its newest paddle is taken back and
  redrawn, up to ``4 * contour_length`` times per image) before the whole image is redrawn.  The
  original only redraws the image, and with LRA's parameters fewer than 0.3 % (128 px) or about
  3 % (32 px) of attempts get two 14-paddle snakes that way; backing out keeps every local rule
  but shapes the accepted paths differently from pure rejection.
* The other target snake's newest paddle also counts as an obstacle (the original adds each
  paddle's zone to the mask one step late for *both* target snakes, so the two targets could
  touch near their seeds), and both target snakes' last paddles block the distractors (the
  original adds only the second one's), so a negative image never has its two targets touching.
* Seeded: image ``i`` of split ``s`` uses ``SeedSequence(seed, spawn_key=(s, i))``, so the output
  depends only on the parameters, not on the number of worker processes.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "PRESETS",
    "PathfinderParams",
    "PathfinderSample",
    "generate_images",
    "generate_sample",
    "params_for",
    "sample_grid",
]

#: Bumped whenever the generator's output for given parameters changes.
GENERATOR_VERSION = 1
# Images per work unit of the process pool; does not change the output.
_CHUNK_IMAGES = 32
# Free pixels drawn per seed orientation before that orientation counts as a failed trial.
_SEED_POSITION_DRAWS = 24
# Whole-image redraws allowed when the two target snakes cannot be grown.
_MAX_IMAGE_ATTEMPTS = 1000
# Dead ends a target snake may back out of (per paddle of contour length) before the image is redrawn.
_BACKTRACKS_PER_PADDLE = 4
# Distractors in a row that find no room before the image counts as full (the original keeps
# trying its whole paddle budget, which changes nothing once nothing fits).
_FULL_AFTER_MISSES = 3


@dataclass(frozen=True)
class PathfinderParams:
    """Generator parameters; names follow ``snakes2_wrapper.py``'s ``Args`` (lengths in pixels)."""

    resolution: int                  # images are resolution x resolution
    padding: int                     # border (pixels) where no paddle may lie
    paddle_length: float             # length of one paddle
    paddle_thickness: float          # stroke width
    paddle_margins: tuple[int, ...]  # exclusion margin around strokes; one drawn per image
    contour_length: int              # paddles per target snake (14 = LRA "hard")
    distractor_length: int           # paddles per distractor snake
    num_distractor_snakes: int
    continuity: float                # turning penalty: turns beyond pi/(2 continuity) are impossible
    seed_distance: float             # distance between the two target snakes' first tails
    marker_radius: float
    snake_contrasts: tuple[float, ...]   # one drawn per snake
    paddle_contrasts: tuple[float, ...]  # one drawn per target-snake paddle position
    single_paddles: bool = False     # fill the rest with single-paddle distractors (see PRESETS)
    max_segment_trials: int = 3      # draws per paddle (original: max_paddle_retrial + 1)
    max_snake_trials: int = 5        # attempts per distractor snake (original: 4 retrials + 1)
    min_free_fraction: float = 0.01  # stop placing distractors below this free fraction

    def __post_init__(self) -> None:
        checks = [
            (self.resolution >= 8, "resolution must be >= 8"),
            (self.padding >= 0, "padding must be >= 0"),
            (self.paddle_length > 0 and self.paddle_thickness > 0, "paddle length and thickness must be > 0"),
            (len(self.paddle_margins) > 0 and min(self.paddle_margins) >= 0, "paddle_margins must be non-negative"),
            (self.contour_length >= 1, "contour_length must be >= 1"),
            (self.distractor_length >= 1 and self.num_distractor_snakes >= 0, "bad distractor settings"),
            (self.continuity > 0, "continuity must be > 0"),
            (self.seed_distance > 0 and self.marker_radius > 0, "seed_distance and marker_radius must be > 0"),
            (4 * self.seed_distance < self.resolution, "seed_distance must be < resolution / 4"),
            (len(self.snake_contrasts) > 0 and len(self.paddle_contrasts) > 0, "contrast lists must not be empty"),
            (self.max_segment_trials >= 1 and self.max_snake_trials >= 1, "trial counts must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Pathfinder generator: {message} (got {self})")


#: LRA's settings (TFDS builder docstrings, lra_benchmarks/data/pathfinder.py); unlisted values are
#: the Args defaults of drewlinsley/pathfinder snakes2_wrapper.py, except ``single_paddles``: the
#: docstrings are edits of that script's body, which switches single paddles off
#: (``args.use_single_paddles = False``) before generating (UNCERTAIN; docs/pathfinder.md).
#: Integer divisions as in the Python 2 original (14 / 3 = 4; Python 3 would fail on 4.67 paddles).
PRESETS: dict[int, PathfinderParams] = {
    32: PathfinderParams(
        resolution=32, padding=1, paddle_length=2, paddle_thickness=0.5, paddle_margins=(1,),
        contour_length=14, distractor_length=14 // 3, num_distractor_snakes=20 // (14 // 3),
        continuity=1.0, seed_distance=7, marker_radius=1.5,
        snake_contrasts=(2.0,), paddle_contrasts=(0.75,),
    ),
    128: PathfinderParams(
        resolution=128, padding=1, paddle_length=5, paddle_thickness=1.5, paddle_margins=(2, 3),
        contour_length=14, distractor_length=14 // 3, num_distractor_snakes=35 // (14 // 3),
        continuity=1.8, seed_distance=20, marker_radius=3,
        snake_contrasts=(0.9,), paddle_contrasts=(1.0,),
    ),
}


def params_for(resolution: int, overrides: Mapping[str, Any] | None = None) -> PathfinderParams:
    """The LRA preset for ``resolution`` (32 or 128) with ``overrides`` (field name -> value)."""
    if resolution not in PRESETS:
        raise ValueError(f"no Pathfinder generator preset for resolution {resolution}; have {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    known = set(PathfinderParams.__dataclass_fields__) - {"resolution"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown Pathfinder generator options {sorted(unknown)}; known: {sorted(known)}")
    kinds = {"int": int, "float": float, "bool": bool}
    for key, value in overrides.items():
        kind = PathfinderParams.__dataclass_fields__[key].type
        if kind.startswith("tuple"):
            element = int if "int" in kind else float
            overrides[key] = tuple(element(v) for v in value)
        elif kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        else:
            overrides[key] = kinds[kind](value)
    return replace(PRESETS[resolution], **overrides)


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #


def _segment_distance(py: np.ndarray, px: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of the points (py, px) to the segment a-b."""
    dy, dx = b[0] - a[0], b[1] - a[1]
    length2 = dy * dy + dx * dx
    s = np.clip(((py - a[0]) * dy + (px - a[1]) * dx) / length2, 0.0, 1.0)
    return np.hypot(py - a[0] - s * dy, px - a[1] - s * dx)


def _stroke_coverage(distance: np.ndarray, thickness: float) -> np.ndarray:
    """Coverage of a pixel by a line of width ``thickness`` at ``distance`` (one-pixel box filter):
    a trapezoid with plateau min(thickness, 1) that reaches 0 at (thickness + 1) / 2."""
    return np.clip(np.minimum((thickness + 1) / 2 - distance, min(thickness, 1.0)), 0.0, None)


@dataclass
class _Paddle:
    """One drawn paddle: its end points and its footprint in a box of the canvas' padded grids."""

    tail: np.ndarray
    head: np.ndarray
    box: tuple[slice, slice]
    ink: np.ndarray   # stroke coverage
    zone: np.ndarray  # exclusion zone: distance <= thickness / 2 + margin - 1/2
    halo: np.ndarray  # zone widened by margin again: candidate end points must avoid it


@dataclass
class PathfinderSample:
    """One generated image with its path data (for inspection and tests)."""

    pixels: np.ndarray  # uint8 (resolution, resolution)
    label: int
    snakes: list[np.ndarray]  # per snake: (paddles, 2 [tail, head], 2 [y, x]); 0 and 1 are the targets
    markers: np.ndarray       # (2, 2): origin and terminal marker centres (y, x)
    marked_snakes: tuple[int, int]  # indices of the snakes the two markers sit on
    margin: int
    params: PathfinderParams = field(repr=False)


def _radii(p: PathfinderParams, margin: int) -> tuple[float, float]:
    """(zone, halo) radii.  The original's zones are dilations drawn at twice the size and shrunk
    with a Lanczos filter; only their cores (values near 1, half a pixel inside) block each other."""
    zone = p.paddle_thickness / 2 + max(margin - 0.5, 0.0)
    return zone, zone + margin


def _footprint(tail: np.ndarray, head: np.ndarray, p: PathfinderParams, margin: int):
    """(y0, x0, ink, zone, halo) of a paddle; the arrays cover rows y0.. and columns x0.."""
    zone_r, halo_r = _radii(p, margin)
    y0, x0 = math.floor(min(tail[0], head[0]) - halo_r), math.floor(min(tail[1], head[1]) - halo_r)
    y1, x1 = math.ceil(max(tail[0], head[0]) + halo_r) + 1, math.ceil(max(tail[1], head[1]) + halo_r) + 1
    d = _segment_distance(np.arange(y0, y1, dtype=np.float64)[:, None],
                          np.arange(x0, x1, dtype=np.float64)[None, :], tail, head)
    return y0, x0, _stroke_coverage(d, p.paddle_thickness), d <= zone_r, d <= halo_r


@functools.lru_cache(maxsize=4096)
def _seed_stencil(p: PathfinderParams, margin: int, degrees: int):
    """Footprint of a paddle with its tail at (0, 0) and a whole-degree orientation (cached: seeds
    sit on pixel centres, so their footprints are translates of these)."""
    theta = math.radians(degrees)
    head = np.array([p.paddle_length * math.sin(theta), p.paddle_length * math.cos(theta)])
    return head, _footprint(np.zeros(2), head, p, margin)


class _Canvas:
    """Float image plus occupancy counts of exclusion zones (counts make removal exact).

    The grids carry an occupied frame of ``pad`` pixels around the image (plus the ``padding``
    border inside it), so a footprint box of a paddle whose ends lie in the image never leaves them.
    """

    def __init__(self, p: PathfinderParams, margin: int, rng: np.random.Generator):
        n = p.resolution
        self.p, self.m, self.rng, self.n = p, margin, rng, n
        self.halo_radius = _radii(p, margin)[1]
        self.pad = pad = math.ceil(p.paddle_length + self.halo_radius) + 2
        size = n + 2 * pad
        self.ink = np.zeros((size, size), np.float64)
        self.zone = np.ones((size, size), np.int16)
        inner = slice(pad + p.padding, pad + n - p.padding)
        self.zone[inner, inner] = 0
        self.halo = self.zone.copy()
        self.interior = self.zone[pad:pad + n, pad:pad + n]  # a view: image pixels

    def _paddle(self, tail: np.ndarray, head: np.ndarray, footprint) -> _Paddle:
        y0, x0, ink, zone, halo = footprint
        h, w = ink.shape
        box = (slice(y0 + self.pad, y0 + self.pad + h), slice(x0 + self.pad, x0 + self.pad + w))
        return _Paddle(tail, head, box, ink, zone, halo)

    def paddle(self, tail: np.ndarray, head: np.ndarray) -> _Paddle | None:
        """The footprint of a paddle, or None if an end point lies outside the image."""
        n = self.n
        if not (0 <= tail[0] < n and 0 <= tail[1] < n and 0 <= head[0] < n and 0 <= head[1] < n):
            return None
        return self._paddle(tail, head, _footprint(tail, head, self.p, self.m))

    def collides(self, paddle: _Paddle) -> bool:
        """Whether the paddle's exclusion zone meets any committed zone (or the border)."""
        return bool(self.zone[paddle.box][paddle.zone].any())

    def commit(self, paddle: _Paddle, sign: int = 1) -> None:
        """Add (sign 1) or remove (sign -1) the paddle's zones."""
        if sign > 0:
            self.zone[paddle.box] += paddle.zone
            self.halo[paddle.box] += paddle.halo
        else:
            self.zone[paddle.box] -= paddle.zone
            self.halo[paddle.box] -= paddle.halo

    def draw(self, paddle: _Paddle, contrast: float) -> None:
        np.maximum(self.ink[paddle.box], contrast * paddle.ink, out=self.ink[paddle.box])

    def free_fraction(self) -> float:
        return float((self.interior == 0).mean())

    def image(self) -> np.ndarray:
        return self.ink[self.pad:self.pad + self.n, self.pad:self.pad + self.n]

    # -- placing paddles ----------------------------------------------------

    def seed(self, region: tuple[int, int] | None = None) -> _Paddle | None:
        """A paddle with a random whole-degree orientation whose tail is a uniformly random pixel
        centre where it fits (rejection sampling among free pixels); ``region`` limits the tail
        to [lo, hi) in both coordinates.  None after ``max_segment_trials`` orientations."""
        p, rng = self.p, self.rng
        lo, hi = region if region is not None else (0, self.n)
        free = np.flatnonzero(self.interior[lo:hi, lo:hi] == 0)
        if free.size == 0:
            return None
        for _ in range(p.max_segment_trials):
            head_offset, (y0, x0, ink, zone, halo) = _seed_stencil(p, self.m, int(rng.integers(-180, 180)))
            h, w = zone.shape
            for flat in rng.choice(free, size=min(_SEED_POSITION_DRAWS, free.size), replace=False).tolist():
                ty, tx = divmod(flat, hi - lo)
                ty, tx = ty + lo, tx + lo
                top, left = ty + y0 + self.pad, tx + x0 + self.pad
                if not self.zone[top:top + h, left:left + w][zone].any():
                    tail = np.array([ty, tx], np.float64)
                    return self._paddle(tail, tail + head_offset, (ty + y0, tx + x0, ink, zone, halo))
        return None

    def extend(self, last: _Paddle) -> _Paddle | None:
        """The next paddle of a snake whose newest paddle is ``last`` (not committed meanwhile)."""
        p, m, rng, pad = self.p, self.m, self.rng, self.pad
        dy, dx = last.head[0] - last.tail[0], last.head[1] - last.tail[1]
        theta_last = math.atan2(dy, dx)
        norm = math.hypot(dy, dx)
        pivot_y, pivot_x = last.head[0] + m * dy / norm, last.head[1] + m * dx / norm
        step = p.paddle_length + m
        angles, sin, cos = _circle(max(int(round(2 * math.pi * step)), 8))  # ~one candidate per pixel of arc
        # Candidate end points; the occupied frame of the padded grid covers those off the image.
        rows = np.floor(pivot_y + step * sin + 0.5).astype(np.intp) + pad
        cols = np.floor(pivot_x + step * cos + 0.5).astype(np.intp) + pad
        turn = np.abs((angles - theta_last + math.pi) % (2 * math.pi) - math.pi)
        weight = np.cos(np.minimum(turn * p.continuity, math.pi / 2)) ** 2 * (self.halo[rows, cols] == 0)
        total = weight.sum()
        if total < 1e-4:
            return None
        cdf = np.cumsum(weight / total)
        pivot = np.array([pivot_y, pivot_x])
        for _ in range(p.max_segment_trials):
            k = min(int(np.searchsorted(cdf, rng.random(), side="right")), len(angles) - 1)
            direction = np.array([sin[k], cos[k]])
            paddle = self.paddle(pivot + m * direction, pivot + step * direction)
            if paddle is not None and not self.collides(paddle):
                return paddle
        return None


@functools.lru_cache(maxsize=64)
def _circle(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    angles = np.arange(count) * (2 * math.pi / count)
    return angles, np.sin(angles), np.cos(angles)


def _grow_targets(canvas: _Canvas) -> list[list[_Paddle]] | None:
    p, rng = canvas.p, canvas.rng
    d = int(2 * p.seed_distance)
    first = canvas.seed(region=(d, p.resolution - d))
    if first is None:
        return None
    canvas.commit(first)  # the other snake must keep clear of it; removed before growing snake 0
    second = None
    for _ in range(p.max_segment_trials):
        phi = math.radians(int(rng.integers(0, 360)))
        tail = np.floor(first.tail + p.seed_distance * np.array([math.sin(phi), math.cos(phi)]) + 0.5)
        theta = math.radians(int(rng.integers(-180, 180)))
        candidate = canvas.paddle(tail, tail + p.paddle_length * np.array([math.sin(theta), math.cos(theta)]))
        if candidate is not None and not canvas.collides(candidate):
            second = candidate
            break
    if second is None:
        return None
    canvas.commit(second)
    snakes = [[first], [second]]
    backtracks = _BACKTRACKS_PER_PADDLE * p.contour_length
    while min(len(snake) for snake in snakes) < p.contour_length:
        snake = min(snakes, key=len)  # the two snakes grow in turn, snake 0 first
        last = snake[-1]
        canvas.commit(last, -1)  # a snake may touch its own newest paddle
        nxt = canvas.extend(last)
        canvas.commit(last)
        if nxt is not None:
            canvas.commit(nxt)
            snake.append(nxt)
            continue
        if len(snake) == 1 or backtracks == 0:
            return None
        backtracks -= 1  # dead end: take back the newest paddle and draw again from the one before
        canvas.commit(snake.pop(), -1)
    return snakes


def _place_distractor(canvas: _Canvas, length: int) -> list[_Paddle] | None:
    """A distractor snake of ``length`` paddles, committed; None (nothing committed) if it fails."""
    first = canvas.seed()
    if first is None:
        return None
    snake = [first]
    canvas.commit(first)
    for _ in range(length - 1):
        last = snake[-1]
        canvas.commit(last, -1)
        nxt = canvas.extend(last)
        canvas.commit(last)
        if nxt is None:
            for paddle in snake:
                canvas.commit(paddle, -1)
            return None
        canvas.commit(nxt)
        snake.append(nxt)
    return snake


def _marker_disc(n: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased disc of intensity 1 (coverage under a one-pixel box filter, approximately)."""
    rows = np.arange(n, dtype=np.float64)
    d = np.hypot(rows[:, None] - centre[0], rows[None, :] - centre[1])
    return np.clip(radius + 0.5 - d, 0.0, 1.0)


def generate_sample(params: PathfinderParams, rng: np.random.Generator) -> PathfinderSample:
    """One image drawn with ``rng`` (see the module docstring for the process)."""
    p = params
    label = int(rng.integers(0, 2))
    margin = int(p.paddle_margins[int(rng.integers(0, len(p.paddle_margins)))])
    for _ in range(_MAX_IMAGE_ATTEMPTS):
        canvas = _Canvas(p, margin, rng)
        targets = _grow_targets(canvas)
        if targets is not None:
            break
    else:
        raise RuntimeError(
            f"Pathfinder generator: could not grow two target snakes of {p.contour_length} paddles in "
            f"{_MAX_IMAGE_ATTEMPTS} attempts at resolution {p.resolution}; the parameters leave too little room"
        )
    snake_contrast = [float(rng.choice(p.snake_contrasts)) for _ in range(2)]
    for s, snake in enumerate(targets):
        for paddle in snake:
            canvas.draw(paddle, snake_contrast[s] * float(rng.choice(p.paddle_contrasts)))

    snakes = list(targets)
    budget = int(150 * 123.5 / (7.5 + 13 * margin + 4 * margin * margin))
    placements = [(p.num_distractor_snakes, p.distractor_length)]
    if p.single_paddles:
        singles = budget - 2 * p.contour_length - p.num_distractor_snakes * p.distractor_length
        placements.append((max(singles, 0), 1))
    for count, length in placements:
        misses = 0  # distractors in a row that found no room: the image is full
        for _ in range(count):
            if canvas.free_fraction() < p.min_free_fraction or misses >= _FULL_AFTER_MISSES:
                break
            for _ in range(p.max_snake_trials):
                snake = _place_distractor(canvas, length)
                if snake is not None:
                    contrast = float(rng.choice(p.snake_contrasts))
                    for paddle in snake:
                        canvas.draw(paddle, contrast)
                    snakes.append(snake)
                    misses = 0
                    break
            else:
                misses += 1

    origin = int(rng.integers(0, 2))
    terminal = origin if label == 1 else 1 - origin
    markers = np.stack([targets[origin][0].tail, targets[terminal][-1].head])
    image = canvas.image()
    for centre in markers:
        image = np.maximum(image, _marker_disc(p.resolution, centre, p.marker_radius))
    pixels = np.floor(image * (255.0 / image.max()) + 0.5).astype(np.uint8)
    path_data = [np.array([[pd.tail, pd.head] for pd in snake]) for snake in snakes]
    return PathfinderSample(pixels, label, path_data, markers, (origin, terminal), margin, p)


# --------------------------------------------------------------------------- #
# Many images, in parallel, deterministically
# --------------------------------------------------------------------------- #


def _image_rng(seed: int, split_index: int, image_index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(split_index, image_index))))


def _generate_chunk(task: tuple[dict, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    params_dict, seed, split_index, start, stop = task
    params = PathfinderParams(**params_dict)
    n = params.resolution
    pixels = np.empty((stop - start, n * n), np.uint8)
    labels = np.empty(stop - start, np.int32)
    for row, i in enumerate(range(start, stop)):
        sample = generate_sample(params, _image_rng(seed, split_index, i))
        pixels[row] = sample.pixels.reshape(-1)
        labels[row] = sample.label
    return pixels, labels


def generate_images(params: PathfinderParams, count: int, *, seed: int, split_index: int = 0,
                    workers: int = 1, on_chunk=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(pixels (k, resolution**2) uint8, labels (k,) int32)`` chunks for images 0..count-1.

    Image ``i`` depends only on ``(params, seed, split_index, i)``; chunks come in order whatever
    ``workers`` is (``<= 1``: in this process; otherwise a ``spawn`` process pool, so a calling
    script needs the usual ``if __name__ == "__main__":`` guard).  ``on_chunk(k)`` is called after
    each chunk of ``k`` images (progress).
    """
    if count < 0 or seed < 0:
        raise ValueError(f"count and seed must be >= 0, got {count}, {seed}")
    spec = asdict(params)
    tasks = [(spec, seed, split_index, a, min(a + _CHUNK_IMAGES, count)) for a in range(0, count, _CHUNK_IMAGES)]
    pool = None
    try:
        if workers > 1 and len(tasks) > 1:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)))
            results = pool.imap(_generate_chunk, tasks)
        else:
            results = map(_generate_chunk, tasks)
        for pixels, labels in results:
            if on_chunk is not None:
                on_chunk(len(labels))
            yield pixels, labels
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def sample_grid(params: PathfinderParams, seed: int, per_label: int) -> list[PathfinderSample]:
    """The first ``per_label`` negatives and positives of a seeded stream (for figures)."""
    found: dict[int, list[PathfinderSample]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in found.values()) < per_label:
        sample = generate_sample(params, _image_rng(seed, 0, i))
        if len(found[sample.label]) < per_label:
            found[sample.label].append(sample)
        i += 1
    return found[0] + found[1]

