"""Normalisation, channel conversion, augmentation, crops and training targets (numpy, per sample)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import scipy.ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed
from skimage.segmentation import find_boundaries

from ..segment import signal_channel


@dataclass(frozen=True)
class Normalisation:
    """Per-image, per-channel percentile scaling: (x - p_low) / (p_high - p_low). Stored with the model."""

    method: str = "percentile"
    low: float = 1.0
    high: float = 99.8

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) any dtype -> float32 (H, W, C)."""
        x = image.astype(np.float32)
        lo = np.percentile(x, self.low, axis=(0, 1), keepdims=True)
        hi = np.percentile(x, self.high, axis=(0, 1), keepdims=True)
        return (x - lo) / np.maximum(hi - lo, 1e-6)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) / (H, W, 1|3|4) -> (H, W, channels): alpha dropped, gray repeated or RGB averaged; a
    colour image that is one gray image in colour (a DAPI image saved as blue RGB) is that channel,
    gray, as the runner reads it (:func:`unetseg.segment.signal_channel`)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W) or (H, W, C) image with C in 1..4, got shape {image.shape}")
    if image.shape[2] in (3, 4):
        readable = image.dtype in (np.uint8, np.uint16, np.float32, np.float64, np.bool_)
        k = signal_channel(image if readable else image.astype(np.float32))
        if k is not None:
            image = image[..., k : k + 1]
    if image.shape[2] == 4:
        image = image[..., :3]
    elif image.shape[2] == 2:  # gray + alpha
        image = image[..., :1]
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return image.mean(axis=2, keepdims=True).astype(image.dtype)
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"cannot make {channels} channels from an image with {image.shape[2]}")


def targets(labels: np.ndarray, channels: int, contact_width: int = 0, rim_fraction: float = 0.0) -> np.ndarray:
    """(C, H, W) float32 targets: nucleus mask, and for 2 channels also the nucleus boundaries
    (the inner boundary pixels of each instance, so touching nuclei are separated). With
    `contact_width` w > 0 the boundary also covers every nucleus pixel within w pixels (a (2w+1)²
    window) of another nucleus: a band 2w wide where nuclei touch, so the model learns to cut
    there (touching nuclei are where seeded labelling fails when the cut has gaps). With `rim_fraction`
    f > 0 it also covers each nucleus's rim: its pixels nearer its own edge than f times the largest
    such distance in it, so what is left for seeds is a core in proportion to the nucleus."""
    mask = (labels > 0).astype(np.float32)
    if channels == 1:
        return mask[None]
    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    if rim_fraction > 0:
        boundary |= _rim(labels, boundary, rim_fraction)
    if contact_width > 0:
        size = 2 * contact_width + 1
        nearby_max = ndi.maximum_filter(labels, size=size, mode="constant", cval=0)
        nearby_min = ndi.minimum_filter(
            np.where(labels > 0, labels, np.iinfo(labels.dtype).max),
            size=size,
            mode="constant",
            cval=np.iinfo(labels.dtype).max,
        )
        boundary |= (labels > 0) & ((nearby_max > labels) | (nearby_min < labels))
    return np.stack([mask, boundary.astype(np.float32)])


def _rim(labels: np.ndarray, edges: np.ndarray, fraction: float) -> np.ndarray:
    """Nucleus pixels whose distance to their nucleus's edge pixels (`edges`: each nucleus's inner
    boundary, where it meets background or another nucleus) is under `fraction` of the largest such
    distance in that nucleus."""
    nuclei = labels > 0
    distance = ndi.distance_transform_edt(nuclei & ~edges)
    largest = np.zeros(int(labels.max()) + 1)
    ids = np.unique(labels[nuclei])
    largest[ids] = ndi.maximum(distance, labels, ids)
    return nuclei & (distance < fraction * largest[labels])


def separation_weights(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """(H, W) float32 per-pixel loss weights that make the loss care most about where nuclei nearly or
    actually touch: the weight map of Ronneberger et al. (2015, eq. 2) without its class-balance term,
    ``1 + w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))``, d1 and d2 the distances to the nearest and the
    second-nearest nucleus. Unlike the paper's map it is defined inside nuclei too (there d1 = 0 and d2 is
    the distance to the nearest *other* nucleus), so the pixels on both sides of a contact are weighted, not
    only background gaps. Distances are computed in each nucleus's bounding box grown by ceil(4 sigma), so a
    weight differs from the exact one by less than ``w0 * exp(-8)``."""
    if labels.ndim != 2:
        raise ValueError(f"expected (H, W) instance labels, got shape {labels.shape}")
    if w0 < 0 or sigma <= 0:
        raise ValueError(f"separation weight needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    reach = int(np.ceil(4 * sigma))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        window = tuple(slice(max(b.start - reach, 0), b.stop + reach) for b in box)
        d = ndi.distance_transform_edt(labels[window] != i).astype(np.float32)
        near, second = d1[window], d2[window]  # views: updated in place
        np.minimum(second, np.maximum(near, d), out=second)
        np.minimum(near, d, out=near)
    return (1 + w0 * np.exp(-((d1 + d2) ** 2) / np.float32(2 * sigma**2))).astype(np.float32)


def small_object_weights(labels: np.ndarray, area: float) -> np.ndarray:
    """(H, W) float32: ``sqrt(area / a)`` on the pixels of a nucleus of a < ``area`` pixels, 1 elsewhere.
    Pixel losses weigh a nucleus by its area while the instance metrics (AP, DSB score) count every nucleus
    once, so small nuclei are cheap to miss; this makes a nucleus's weight grow like sqrt(a) below
    ``area`` instead of like a. Areas are those in `labels` (a crop: a nucleus cut by the crop's edge counts
    its visible part)."""
    if labels.ndim != 2:
        raise ValueError(f"expected (H, W) instance labels, got shape {labels.shape}")
    if area < 0:
        raise ValueError(f"small object area must be >= 0 pixels, got {area}")
    sizes = np.bincount(labels.ravel().astype(np.int64)).astype(np.float32)
    per_label = np.sqrt(np.maximum(np.float32(area) / np.maximum(sizes, 1), 1), dtype=np.float32)
    per_label[0] = 1
    return per_label[labels]


@dataclass(frozen=True)
class PixelWeights:
    """Per-pixel BCE weights from instance labels: the product of :func:`separation_weights` (``separation``
    > 0) and :func:`small_object_weights` (``small_area`` > 0). ``NucleiDataset`` appends them to the target
    as one last channel, which ``unetseg.train.loss_fn`` reads."""

    separation: float = 0.0
    sigma: float = 5.0
    small_area: float = 0.0

    def __post_init__(self):
        if self.separation < 0 or self.sigma <= 0 or self.small_area < 0:
            raise ValueError(
                f"pixel weights need separation >= 0, sigma > 0 and small_area >= 0 pixels, got "
                f"separation={self.separation}, sigma={self.sigma}, small_area={self.small_area}"
            )

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        weights = np.ones(labels.shape, np.float32)
        if self.separation > 0:
            weights *= separation_weights(labels, self.separation, self.sigma)
        if self.small_area > 0:
            weights *= small_object_weights(labels, self.small_area)
        return weights


def restain(image: np.ndarray, scale, shift) -> np.ndarray:
    """A colour image (H, W, 3) read as transmitted light (1: white) with its haematoxylin, eosin
    and DAB amounts (colour deconvolution with Ruifrok & Johnston's stain vectors, as scikit-image's)
    each multiplied by `scale` and shifted by `shift` optical density, recomposed; float32. Pixels
    under 1/255 are read as 1/255 (no optical density is infinite); nothing is clipped otherwise, so
    a scale of 1 and a shift of 0 give the image back."""
    # one 3x3 map of optical densities: od -> (od @ hed_from_rgb * scale + shift) @ rgb_from_hed
    transform = ((hed_from_rgb * np.asarray(scale)) @ rgb_from_hed).astype(np.float32)
    offset = (np.asarray(shift) @ rgb_from_hed).astype(np.float32)
    od = -np.log(np.maximum(np.asarray(image, np.float32), np.float32(1 / 255)))
    return np.exp(-(od @ transform + offset)).astype(np.float32)


def is_colour(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image is in colour: three channels that are not all equal (gray images
    are read into three equal channels)."""
    return image.shape[2] == 3 and not (
        np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    )


def stain_jitter(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """HED stain augmentation (Tellez et al. 2018, Med. Image Anal. 2019) of a normalised (H, W, 3)
    colour image: :func:`restain` with each stain's scale drawn from U(1 - sigma, 1 + sigma) and its
    shift from U(-sigma, sigma). Images that are not colour (gray in every channel, or not 3
    channels) are returned as they are, so fluorescence keeps its look."""
    if not is_colour(image):
        return image
    scale = rng.uniform(1 - sigma, 1 + sigma, 3)
    return restain(image, scale, rng.uniform(-sigma, sigma, 3))


def pad_to(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pads the image (zero-pads labels) so that both sides are at least `size`."""
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        labels = np.pad(labels, ((0, ph), (0, pw)))
    return image, labels


def median_diameter(labels: np.ndarray) -> float:
    """The median equivalent diameter (``sqrt(4 area / pi)``, pixels) of the objects of instance
    labels (H, W); NaN when there are none. The nucleus size a model's ``diameter`` refers to, as
    Cellpose's ``diameter`` does."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if len(areas) else float("nan")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, C) image resized to `size` (width, height) as the runner resizes images:
    area-averaged when shrinking, bilinear when enlarging."""
    h, w, channels = image.shape
    method = cv2.INTER_AREA if size[0] < w or size[1] < h else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=method).reshape(size[1], size[0], channels)


def rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) image (:func:`resize_image`) and its labels (nearest) resized by `factor`."""
    if factor == 1:
        return image, labels
    h, w = labels.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return resize_image(image, size), cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)


def random_crop(image, labels, size: int, rng: np.random.Generator):
    image, labels = pad_to(image, labels, size)
    y = rng.integers(0, image.shape[0] - size + 1)
    x = rng.integers(0, image.shape[1] - size + 1)
    return image[y : y + size, x : x + size], labels[y : y + size, x : x + size]


def resize(image, labels, size: int):
    """Resize to size x size (image bilinear, labels nearest), as the DSB starter projects did."""
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[..., None]
    return image, cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)


def lose_resolution(image: np.ndarray, factor: float) -> np.ndarray:
    """An (H, W, C) float32 image shrunk by `factor` (area) and enlarged back to its size (bilinear):
    what the runner's enlargement makes of an image taken at `factor` times lower resolution."""
    h, w = image.shape[:2]
    return resize_image(resize_image(image, (max(1, round(w / factor)), max(1, round(h / factor)))), (w, h))


def elastic_deform(image: np.ndarray, labels: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warps an (H, W, C) float32 image (bilinear) and its labels (nearest) by the displacement field
    that bicubically interpolates `grid` (2, gy, gx): (dy, dx) in pixels at gy x gx control points
    spread over the image. Borders are mirrored."""
    h, w = labels.shape
    dy, dx = (cv2.resize(np.asarray(g, np.float32), (w, h), interpolation=cv2.INTER_CUBIC) for g in grid)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xx + dx, yy + dy
    warped = cv2.remap(
        np.ascontiguousarray(image), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    ).reshape(image.shape)
    # cv2.remap takes 16-bit labels; larger ids go through an index of the ids present
    small = labels.size == 0 or (labels.min() >= 0 and labels.max() <= 65535)
    ids, index = (None, labels) if small else np.unique(labels, return_inverse=True)
    if ids is not None and ids.size > 65536:
        raise ValueError(f"elastic deformation handles up to 65536 label ids per crop, got {ids.size}")
    moved = cv2.remap(
        index.reshape(h, w).astype(np.uint16), map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101
    )
    return warped, (moved if small else ids[moved]).astype(labels.dtype, copy=False)


@dataclass(frozen=True)
class Augment:
    """Random augmentation of a normalised image (H, W, C) float32 and its labels (H, W)."""

    flips: bool = True
    rotations: bool = True
    scale: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.03
    invert: float = 0.2  # bright-field images have dark nuclei
    elastic: float = 0.0
    """elastic deformation as in the U-Net paper: displacements on a coarse 3x3 grid drawn with this
    standard deviation in pixels, bicubically interpolated to every pixel; 0: off"""
    blur: float = 0.0
    """half of the items are Gaussian-blurred with a sigma drawn up to this many pixels; 0: off"""
    low_res: float = 1.0
    """half of the items lose resolution by a factor drawn (log-uniformly) from 1 to this: shrunk
    (area) and enlarged back (bilinear), as an image whose nuclei are smaller than the canonical
    diameter looks once the runner enlarges it; 1: off"""
    low_res_colour_only: bool = False
    """lost resolution for colour images only (bright-field and H&E, which slide scanners take at 20x
    as often as at 40x); gray images keep theirs"""
    channel_jitter: float = 0.0
    """each channel's own gain 1 ± c and offset ± c / 2 (stain and colour variation); 0: off"""
    stain: float = 0.0
    """colour images' haematoxylin, eosin and DAB amounts each scaled by 1 ± s and shifted by ± s
    optical density (:func:`stain_jitter`: other labs' staining); gray images are left as they are; 0: off"""

    def __post_init__(self):
        for name in ("elastic", "blur", "channel_jitter", "stain", "noise", "brightness", "contrast", "invert"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if not self.low_res >= 1:
            raise ValueError(f"augmentation low_res must be >= 1 (1: off), got {self.low_res}")

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """:meth:`geometric`, then :meth:`photometric`."""
        image, labels = self.geometric(image, labels, rng)
        return self.photometric(image, rng), labels

    def geometric(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Scale, elastic deformation, flips and quarter turns, of the image and its labels alike."""
        if self.scale != (1.0, 1.0):
            # resized as the runner resizes (area-averaged when shrinking): no aliasing it never shows
            image, labels = rescale(image, labels, float(np.exp(rng.uniform(*np.log(self.scale)))))
        if self.elastic:
            image, labels = elastic_deform(image, labels, rng.normal(0, self.elastic, (2, 3, 3)))
        if self.flips and rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        if self.flips and rng.random() < 0.5:
            image, labels = image[::-1], labels[::-1]
        if self.rotations:
            k = int(rng.integers(4))
            image, labels = np.rot90(image, k), np.rot90(labels, k)
        return image, np.ascontiguousarray(labels)

    def photometric(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stain jitter, gamma, contrast, brightness, channel jitter, inversion, lost resolution, blur
        and noise of the image: per pixel (lost resolution and blur nearly so), so a training crop
        takes them after it is cut from its scaled window, on its own pixels only (a 192² crop is
        24-98% of the window's)."""
        # looked at before the channel jitter makes a gray image's channels differ
        keeps_resolution = self.low_res_colour_only and not is_colour(image)
        if self.stain:
            image = stain_jitter(image, self.stain, rng)
        image = np.clip(image, 0, None) if self.gamma else image
        if self.gamma:
            image = np.power(image, rng.uniform(*self.gamma), dtype=np.float32)
        image = (image - 0.5) * (1 + rng.uniform(-self.contrast, self.contrast)) + 0.5
        image = image + rng.uniform(-self.brightness, self.brightness)
        if self.channel_jitter:
            c = self.channel_jitter
            channels = image.shape[2]
            image = image * rng.uniform(1 - c, 1 + c, channels).astype(np.float32) + rng.uniform(
                -c / 2, c / 2, channels
            ).astype(np.float32)
        if self.invert and rng.random() < self.invert:
            image = 1 - image
        if self.low_res > 1 and not keeps_resolution and rng.random() < 0.5:
            image = lose_resolution(image, float(np.exp(rng.uniform(0, np.log(self.low_res)))))
        if self.blur and rng.random() < 0.5:
            sigma = rng.uniform(0, self.blur)
            if sigma > 0.1:
                image = cv2.GaussianBlur(np.ascontiguousarray(image), (0, 0), sigma).reshape(image.shape)
        if self.noise:
            image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0, self.noise))
        return np.ascontiguousarray(image, dtype=np.float32)
