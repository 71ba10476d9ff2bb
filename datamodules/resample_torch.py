"""The ``torch`` resampling backend of the cache build (``paper_torch``): paper mode in a few matmuls.

Same output as paper mode (``datamodules.preprocess``, torchio + SimpleITK) up to float32 rounding:
RAS+ (the affine as torchio's ``ToOrientation`` computes it), HU clamped to [-1000, 1000] before
and after, ``floor(n * s / spacing)`` voxels per axis centred on the input's field of view, the
same output affine, and the same filters:

- antialiasing: torchio's sigma per axis (Cardoso et al., MICCAI 2015:
  ``sigma = s * sqrt((k^2 - 1) / (8 ln 2))`` mm for a downsampling factor ``k = spacing / s > 1``,
  none where ``k <= 1``), applied as SimpleITK's recursive Gaussian, the filter torchio runs, taken
  as its matrix of impulse responses along the axis.
- interpolation: cubic B-spline as SimpleITK's interpolator does it (the prefilter that makes the
  spline interpolate, mirror-symmetric edges, the 4-tap spline). ``interpolation="linear"`` (tests
  only) is linear interpolation, which equals
  ``torch.nn.functional.grid_sample(mode="bilinear", align_corners=True)`` at the same points.

Neither ``grid_sample`` nor ``interpolate`` is used: the output grid is the input grid scaled and
shifted along each axis, so filter and interpolation are separable, and each axis's are folded into
one banded ``(n_out, n_in)`` matrix. The volume is contracted with the three matrices block by block
(float32 matmuls that read only each block's band), on CUDA when available, else on the CPU. A sum
rounding the other way makes about 1 voxel in 10^4 differ from paper mode by 1 HU (docs/data.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import SimpleITK as sitk
import torch
from nibabel import orientations as nio

HU_MAX = 1000
TRUNCATE = 4.0  # Gaussian kernel radius in sigmas


def antialias_sigma(factor: float) -> float:
    """torchio's antialiasing sigma in input voxels for a downsampling ``factor`` (0: no smoothing)."""
    if factor <= 1:
        return 0.0
    return math.sqrt((factor**2 - 1) / (8 * math.log(2)))


def output_grid(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """torchio's resampling grid for a spacing: ``(shape, affine, index_map)``.

    ``index_map`` (3, 2): output index ``j`` of axis ``a`` samples input index
    ``index_map[a, 0] * j + index_map[a, 1]``: the grid keeps the input's centre and directions."""
    old_size = np.asarray(shape, dtype=float)
    old_spacing = np.sqrt(np.sum(affine[:3, :3] * affine[:3, :3], axis=0))
    new_spacing = np.asarray(spacing, dtype=float)
    new_size = np.floor(old_size * old_spacing / new_spacing)
    ratio = new_spacing / old_spacing
    offset = (old_size - 1) / 2 - ratio * (new_size - 1) / 2
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = offset
    out_shape = (int(new_size[0]), int(new_size[1]), int(new_size[2]))
    return out_shape, affine @ scale, np.stack([ratio, offset], axis=1)


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """The ``(n, n)`` antialiasing operator of one axis, ``sigma`` in voxels: SimpleITK's recursive
    Gaussian (what torchio runs), as its impulse responses; a sampled Gaussian truncated at 4 sigma
    with replicated edges where the axis is too short for it (under 4 voxels)."""
    if n >= 4:
        impulses = sitk.GetImageFromArray(np.eye(n))  # one impulse per row, along SimpleITK's x
        smoothed = sitk.RecursiveGaussian(
            impulses, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, 0
        )
        return sitk.GetArrayFromImage(smoothed).T
    radius = max(1, math.ceil(TRUNCATE * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((n, n))
    rows = np.arange(n)
    for tap, weight in zip(taps, kernel, strict=True):
        np.add.at(matrix, (rows, np.clip(rows + tap, 0, n - 1)), weight)
    return matrix


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Whole-sample mirror of indices outside [0, n - 1] (-1 -> 1, n -> n - 2), as ITK's B-spline."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index > n - 1, period - index, index)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The centred cubic B-spline beta3(t)."""
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def axis_matrix(
    n_in: int,
    n_out: int,
    ratio: float,
    offset: float,
    antialias: bool = True,
    interpolation: str = "bspline",
) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 operator of one axis: Gaussian (replicated edges) then
    ``interpolation`` at ``ratio * j + offset``: ``"linear"``, or ``"bspline"`` (cubic, what paper mode's
    SimpleITK interpolator does: the prefilter that makes the spline interpolate, mirror-symmetric
    edges, then the 4-tap spline; the prefilter's inverse is dense but decays as 0.27^k, so the
    operator is cut to a band at 1e-7 of its largest weight)."""
    sigma = antialias_sigma(ratio) if antialias else 0.0
    smooth = gaussian_matrix(n_in, sigma) if sigma > 0 else np.eye(n_in)
    # Upsampled, the first and last samples lie up to half an input voxel outside [0, n_in - 1]:
    # linear takes the edge voxel there, the B-spline its mirrored coefficients (as ITK does).
    position = ratio * np.arange(n_out) + offset
    if interpolation == "linear":
        position = np.clip(position, 0, n_in - 1)
        low = np.clip(np.floor(position).astype(int), 0, max(0, n_in - 2))
        weight = (position - low)[:, None]
        high = np.minimum(low + 1, n_in - 1)
        return (1 - weight) * smooth[low] + weight * smooth[high]
    if interpolation != "bspline":
        raise ValueError(f"interpolation must be 'linear' or 'bspline', not {interpolation!r}")
    spline = np.zeros((n_out, n_in))
    base = np.floor(position).astype(int)
    for tap in range(-1, 3):
        index = base + tap
        np.add.at(spline, (np.arange(n_out), _mirror(index, n_in)), _cubic_bspline(position - index))
    # Prefilter: samples f = A c with A = (1, 4, 1) / 6 on mirror-extended coefficients c, so the
    # operator is spline @ A^-1 @ smooth; A is tridiagonal: spline @ A^-1 = solve(A^T, spline^T)^T.
    if n_in > 1:
        system_t = np.zeros((3, n_in))  # A^T in scipy's banded storage (upper, main, lower diagonal)
        system_t[0, 1:] = 1 / 6
        system_t[1] = 4 / 6
        system_t[2, :-1] = 1 / 6
        # Mirrored edges: row 0 of A reads c[-1] = c[1] too, row n - 1 reads c[n] = c[n - 2].
        system_t[2, 0] = 2 / 6  # A^T[1, 0] = A[0, 1]
        system_t[0, n_in - 1] = 2 / 6  # A^T[n - 2, n - 1] = A[n - 1, n - 2]
        spline = scipy.linalg.solve_banded((1, 1), system_t, spline.T).T
    matrix = spline @ smooth
    matrix[np.abs(matrix) < 1e-7 * np.abs(matrix).max()] = 0
    return matrix


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ras_orientation(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(ornt, ras_affine)``: nibabel's orientation of the array axes (row ``i``: the RAS axis that
    array axis ``i`` runs along, and -1 where it runs backwards) and the affine of the RAS+ array, as
    torchio's ``ToOrientation("RAS")`` computes it."""
    ornt = nio.io_orientation(affine)
    transform = nio.ornt_transform(ornt, nio.axcodes2ornt(("R", "A", "S")))
    return transform, np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(transform, tuple(shape))


def _contract_banded(volume: torch.Tensor, matrix: np.ndarray, dim: int, block: int = 32) -> torch.Tensor:
    """``volume`` (3-D, C-contiguous) contracted with ``matrix`` over ``dim``, which keeps its place,
    block by block: each block of output rows reads only the slab its band of ``matrix`` touches,
    through strided views (no copies of the volume)."""
    shape = list(volume.shape)
    shape[dim] = matrix.shape[0]
    out = torch.empty(shape, dtype=volume.dtype, device=volume.device)
    for start in range(0, matrix.shape[0], block):
        rows = matrix[start : start + block]
        stop = start + len(rows)
        used = np.flatnonzero(np.any(rows != 0, axis=0))
        first, last = int(used[0]), int(used[-1]) + 1
        weights = torch.from_numpy(np.ascontiguousarray(rows[:, first:last])).to(volume.device, volume.dtype)
        slab = volume.narrow(dim, first, last - first)
        if dim == 0:
            torch.mm(weights, slab.reshape(last - first, -1), out=out[start:stop].view(len(rows), -1))
        elif dim == 1:
            out[:, start:stop] = torch.matmul(weights, slab)
        else:
            out[:, :, start:stop] = torch.matmul(slab, weights.T)
    return out


def resample_hu(
    hu: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    device: torch.device | str | None = None,
    antialias: bool = True,
    interpolation: str = "bspline",
) -> tuple[np.ndarray, np.ndarray]:
    """HU (X, Y, Z) float32 with its affine -> (int16 HU in [-1000, 1000], RAS+, ``spacing`` mm; its
    RAS+ affine), on ``device`` (default: CUDA when available, else CPU). ``hu`` may be clamped in
    place.

    The reorientation is folded into the axis matrices (a flipped axis reverses its matrix's
    columns), so the volume is never transposed: the axes are contracted in memory order, outermost
    first, and only the small result is permuted to RAS."""
    device = torch.device(device) if device is not None else default_device()
    transform, ras_affine = ras_orientation(affine, hu.shape)
    ras_axis = transform[:, 0].astype(int)  # array axis i runs along RAS axis ras_axis[i]
    ras_shape = [0, 0, 0]
    for i in range(3):
        ras_shape[ras_axis[i]] = hu.shape[i]
    out_shape, out_affine, index_map = output_grid(ras_shape, ras_affine, spacing)

    # A view of hu with its axes in memory order (outermost first): no copy for C or F order.
    memory_order = [int(i) for i in np.argsort([-s for s in hu.strides], kind="stable")]
    array = hu.transpose(memory_order)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    volume = torch.from_numpy(array).to(device=device, dtype=torch.float32)
    volume.clamp_(-HU_MAX, HU_MAX)  # paper mode clamps before resampling too
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32 products
    try:
        done: list[int] = []  # RAS axes of the result, in memory order
        for step, axis in enumerate(memory_order):
            r = int(ras_axis[axis])
            matrix = axis_matrix(
                hu.shape[axis], out_shape[r], index_map[r, 0], index_map[r, 1], antialias, interpolation
            )
            if transform[axis, 1] < 0:
                matrix = matrix[:, ::-1]
            volume = _contract_banded(volume, matrix, step)
            done.append(r)
        volume = volume.permute([done.index(r) for r in range(3)])
        out = volume.clamp_(-HU_MAX, HU_MAX).round_().to(torch.int16)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return np.ascontiguousarray(out.cpu().numpy()), out_affine
