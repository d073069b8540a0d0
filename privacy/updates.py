"""What a curious server can read from one site's model update.

Every round a site sends `local - global` weights computed from its images.
Two attacks reconstruct those images from the update alone, knowing what a
Flower server knows: the global model it sent and the training settings it
configured (optimizer, learning rate, local epochs, batch size, the site's
public training seed):

- `analytic_recovery` (Phong et al. 2017): for a fully connected first layer
  with bias, row i of the weight gradient is (dL/db_i) * x, so one image is
  the weight row's update divided by its bias' update. With several images a
  row mixes those whose ReLU unit fired; rows that only one image activated
  repeat that image exactly, so identical row-images are grouped and the
  largest groups are returned. Under Adam the update is first inverted element
  by element and every element weighted by the precision float32 left it
  (`adam_step_gradient`: steps saturated at the full learning rate carry
  none), and the image is the weighted rank-one fit of the rows
  (`rank_one_fit`). Works on the `mlp` reference model.
  Last, the estimate is snapped to the grid the pixels were stored on
  (`snap_to_grid`): the images are integers of a known bit depth (8-bit
  phantoms; study.data keeps uint8 through resizing), which the model sees
  as k / (2^bits - 1) (study.task.to_float). The attacker fits the estimate's
  intensity scale and offset to that grid (the bias column that fixes the
  scale is the least precise under Adam: scale errors of a few tenths of a
  percent), then rounds each pixel to its level. Criterion: the pixels' mean
  resultant length on the fitted grid, R = |mean exp(2 pi i v / a)|, must be
  at least 0.3, i.e. errors about the grid within about 0.25 level, where
  rounding lowers the expected squared error; otherwise the estimate is kept
  as it is (noise under DP, grids finer than 8 bits). At 32 px most pixels
  then come back exact (the demo's update: 68.6 -> 75.2 dB, seed 1: 57.4 ->
  64.8 dB; at 64 px 62.1 -> 64.2 dB).
- The optimisation attack's restarts are ranked, and `simulate_update`
  reproduces a site's update, on the site's own training
  (study.task.train_tensors, the loop study.task.train runs): bit for bit.
  Only its descent runs on a differentiable surrogate of that training
  (`differentiable_update`), built from the same public pieces of
  study.task: `batch_order`, `loss`, `proximal_term`, `make_optimizer`'s
  hyper-parameters.
- `invert_update` (Geiping et al. 2020, "Inverting Gradients"): optimise
  candidate images so that the update they would produce, simulated step by
  step through the site's own training (its batches, loss, optimizer, the
  multi-step variant of FedAvg), points the same way as the observed update:
  cosine distance plus a total-variation prior, Adam on the signed gradient
  with a step-decay schedule, several restarts and the restart with the lowest
  objective kept (the attacker cannot see the truth). For one X-ray the labels
  come from the update itself (iDLG, Zhao et al. 2020): with BCE, the head
  bias' gradient (sigmoid(z) - y) is negative exactly for the findings
  present, so the bias' update is positive for them under SGD and Adam alike.
  Otherwise the labels (MRI: the masks) are taken as known: a stronger
  attacker, so the leak measured is an upper bound for that point.

medfed's sites train with Adam, whose first step from a fresh state moves
each weight by about -lr * sign(g): the magnitudes of the gradient are all
but lost (only where |g| is near Adam's eps of 1e-8 do they survive float32
rounding). Both attacks model this honestly: the analytic one inverts Adam's
first step element by element and reads the image from the elements whose
step is not saturated, weighted by their float32 precision (a constant
gradient over several steps is read as one step of lr x steps; where every
element saturated, as after several steps on bright pixels, little is left to
read); the optimisation one simulates Adam with a smoothed sign (`adam_eps`
of the attacker, much larger than the site's) so that the objective has a
gradient. `optimizer = "sgd"` gives the setting of
the papers (FedSGD / FedAvg with SGD), in which the update is a scaled sum of
gradients.

Scores: privacy/scores.py.

Written here rather than taken from `breaching` (Geiping's library): its one
release (0.1.2, 2022) pulls torchvision and hydra, and its multi-step
objective simulates SGD only, while medfed's sites run Adam.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from study.task import batch_order, loss, make_optimizer, proximal_term, train_tensors

# The sites' Adam hyper-parameters, read from the optimizer study.task builds
_ADAM = make_optimizer("adam", [torch.zeros(1)], 1.0).defaults
ADAM_BETAS: tuple[float, float] = tuple(_ADAM["betas"])
ADAM_EPS: float = _ADAM["eps"]
# Relative rounding of the float32 step itself: torch's Adam rounds it in about seven
# operations (lerp, square, addcmul, sqrt, + eps, divide, addcdiv), up to 2^-24 each;
# four of them as the half-width read the demo's updates best (seven: batches of
# several images no longer group), and 1 instead lost 1 to 1.5 dB there
ADAM_STEP_RELATIVE_ERROR = 4 * 2.0**-24


# --------------------------------------------------------------------- setup
@dataclass(frozen=True)
class LocalTraining:
    """What the server knows about a site's local training (it configured it)."""

    modality: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int  # the site's training seed this round (derived from the study's)
    optimizer: str = "adam"
    proximal_mu: float = 0.0

    def steps(self, num_images: int) -> int:
        """Optimizer steps for `num_images`: epochs x ceil(num_images / batch size)."""
        return self.epochs * math.ceil(num_images / self.batch_size)

    def batches(self, num_images: int) -> list[torch.Tensor]:
        """The index batches study.task.train takes, in order (its own sampler)."""
        return list(batch_order(num_images, self.batch_size, self.epochs, self.seed))


def parameter_update(global_state: Mapping, local_model: nn.Module) -> dict[str, torch.Tensor]:
    """local - global for every trainable parameter (what FedAvg averages)."""
    return {
        name: (p.detach().cpu() - torch.as_tensor(global_state[name]).cpu()).float()
        for name, p in local_model.named_parameters()
    }


# ------------------------------------------------------------------ analytic
def adam_first_step_gradient(
    delta: torch.Tensor, learning_rate: float, eps: float = ADAM_EPS
) -> torch.Tensor:
    """The gradient behind one Adam step from a fresh state.

    That step is delta = -lr * g / (|g| + eps) (bias corrections cancel), so
    |g| = eps * r / (1 - r) with r = |delta| / lr. Only gradients near eps
    survive float32 rounding; larger ones come back as noise (r rounds to 1).
    """
    r = (-delta.double() / learning_rate).clamp(-1 + 1e-12, 1 - 1e-12)
    return (eps * r / (1 - r.abs())).float()


def gradient_estimate(update: torch.Tensor, training: LocalTraining) -> torch.Tensor:
    """A tensor proportional to the summed gradient behind `update` (SGD: exact
    up to -lr; Adam: inverted first step, see adam_first_step_gradient)."""
    if training.optimizer == "sgd":
        return -update / training.learning_rate
    return adam_first_step_gradient(update, training.learning_rate)


def first_linear_layer(model: nn.Module) -> tuple[str, str] | None:
    """Names of (weight, bias) of the model's first layer when it is fully
    connected with a bias (the analytic attack's condition), else None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if module.bias is None:
                return None
            prefix = f"{name}." if name else ""
            return f"{prefix}weight", f"{prefix}bias"
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            return None
    return None


def adam_step_gradient(
    delta: torch.Tensor,
    before: torch.Tensor,
    learning_rate: float,
    eps: float = ADAM_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient behind an Adam step and its standard deviation, element by
    element (float64).

    One step from a fresh state is delta = -lr * g / (|g| + eps), so
    |g| = eps * r / (1 - r) with r = |delta| / lr (adam_first_step_gradient).
    What limits the inversion is float32: the site's new weight
    `before + delta` is rounded to its float32 spacing u, and the step itself
    by a few roundings of 2^-24, so r lies within
    h = u / (2 lr) + ADAM_STEP_RELATIVE_ERROR * r of its observed value, and
    |g| within the interval that r - h and r + h give; the deviation is that
    interval's width / sqrt(12) (uniform rounding error).
    An element whose r + h reaches 1 is saturated (the step is within rounding
    of the full lr: |g| far above eps, unbounded above): its deviation is
    infinite and it carries no weight. The deviation is smallest for |g| near
    eps and grows as |g| / eps beyond it: the precision criterion the analytic
    attack weighs elements by.
    """
    before = before.float()
    after = before + delta.float()  # what the site holds after its step, in float32
    step = after.double() - before.double()
    r = (-step / learning_rate).clamp(-1 + 1e-12, 1 - 1e-12)
    gradient = eps * r / (1 - r.abs())
    spacing = (torch.nextafter(after.abs(), torch.tensor(math.inf)) - after.abs()).double()
    half_width = spacing / (2 * learning_rate) + ADAM_STEP_RELATIVE_ERROR * r.abs()
    low = (r.abs() - half_width).clamp_min(0.0)
    high = r.abs() + half_width
    saturated = high >= 1.0
    high = high.clamp_max(1 - 1e-12)
    deviation = eps * (high / (1 - high) - low / (1 - low)) / math.sqrt(12)
    deviation[saturated] = math.inf
    return gradient, deviation


def rank_one_fit(
    gradient: torch.Tensor, deviation: torch.Tensor, iterations: int = 30
) -> torch.Tensor | None:
    """The image x of rows that one image alone produced: each such row of the
    first layer's gradient, bias first, is beta_i * [1, x]. Weighted least
    squares (weights 1 / deviation^2) of that rank-one model over all rows at
    once, by alternating the row factors beta and the image; the bias column
    fixes the scale (x_0 = 1). `gradient`, `deviation`: (rows, 1 + pixels).
    Returns the pixels (float64), or None when no element carries weight."""
    weight = deviation.pow(-2)
    weight[~torch.isfinite(weight)] = 0.0
    if not bool((weight[:, 0] > 0).any()) or not bool((weight[:, 1:] > 0).any()):
        return None
    beta = gradient[:, 0].clone()
    x = torch.ones(gradient.shape[1], dtype=torch.float64)
    for _ in range(iterations):
        x = (weight * gradient * beta[:, None]).sum(0) / (weight * beta[:, None] ** 2).sum(
            0
        ).clamp_min(1e-300)
        if not bool(torch.isfinite(x[0])) or x[0] == 0:
            return None
        x = x / x[0]
        beta = (weight * gradient * x).sum(1) / (weight * x * x).sum(1).clamp_min(1e-300)
    return x[1:] if bool(torch.isfinite(x).all()) else None


def analytic_recovery(
    update: Mapping[str, torch.Tensor],
    training: LocalTraining,
    layer: tuple[str, str],
    num_images: int,
    image_shape: tuple[int, ...],
    *,
    global_state: Mapping[str, torch.Tensor] | None = None,
    group_tolerance: float = 1e-3,
    group_distance: float = 3.0,
    bits: int | None = None,
) -> np.ndarray:
    """Images read back from a fully connected first layer's update.

    SGD: each row i with a non-zero bias update gives the candidate image
    dW_i / db_i, exact for a row one image alone activated. Candidates equal
    within `group_tolerance` (RMS on [0, 1]) are grouped; the `num_images`
    largest groups (then the largest bias updates) are returned, each the mean
    of its group; for one image and no group of two, the median over all rows.

    Adam (the sites' optimizer; `global_state`, the weights the server sent,
    is then required): the step is inverted element by element
    (adam_step_gradient, with lr x local steps as the learning rate: a
    constant gradient over T steps moves a weight by T * lr * g / (|g| + eps)),
    and every element is weighted by the precision float32 leaves it. Elements
    whose step saturated at the full learning rate (|g| far above Adam's eps)
    get weight 0; those with |g| near eps count most. The selection criterion
    is thus per element, not per row: a row whose bias saturated still
    contributes its dark pixels, whose gradients are small. One image: the
    image is the weighted rank-one fit of all active rows (rank_one_fit).
    Several: each row's own estimate (row / bias) is compared with the rows
    already grouped, most precise rows first; a row joins the first group whose
    leader it matches to within `group_distance` in mean squared difference
    per pixel over the summed variances (about 1 for two rows of the same
    image), else it leads a new group; the `num_images` largest groups are fitted
    rank-one. Where nothing is left to fit (every element saturated, as after
    several Adam steps on bright pixels: the update then holds little more
    than the gradient's signs), the rows of the first step's inversion are
    read as under SGD (median or groups).

    `bits`: the bit depth the images are stored at (the study's data, public),
    so that the pixels the model saw lie on the grid k / (2^bits - 1); each
    image is then snapped to that grid where its estimate resolves it
    (`snap_to_grid`). Returns float64 (num_images, *image_shape), clipped to
    [0, 1].
    """
    images = _analytic_images(
        update, training, layer, num_images, global_state, group_tolerance, group_distance
    ).clamp(0, 1)
    if bits is not None:
        images = torch.stack([snap_to_grid(x, bits)[0] for x in images])
    return images.reshape(num_images, *image_shape).numpy()


def _analytic_images(
    update: Mapping[str, torch.Tensor],
    training: LocalTraining,
    layer: tuple[str, str],
    num_images: int,
    global_state: Mapping[str, torch.Tensor] | None,
    group_tolerance: float,
    group_distance: float,
) -> torch.Tensor:
    """analytic_recovery before clipping and snapping: (num_images, pixels) float64."""
    if training.optimizer == "adam":
        if global_state is None:
            raise ValueError("analytic attack on an Adam update: pass global_state")
        recovered = _adam_recovery(
            update, training, layer, num_images, global_state, group_distance
        )
        if recovered is not None:
            return recovered
    gw = gradient_estimate(update[layer[0]], training).double()
    gb = gradient_estimate(update[layer[1]], training).double()
    active = gb.abs() > gb.abs().max() * 1e-9
    if not bool(active.any()):
        raise ValueError("analytic attack: the first layer's bias did not change (no active row)")
    strength = gb[active].abs()
    rows = gw[active] / gb[active, None]
    order = torch.argsort(strength, descending=True)
    rows, strength = rows[order], strength[order]
    close = (torch.cdist(rows, rows) / math.sqrt(rows.shape[1]) < group_tolerance).numpy()
    group = torch.full((len(rows),), -1, dtype=torch.long)
    leaders: list[int] = []
    for i in range(len(rows)):  # the first leader (strongest row) within tolerance
        near = np.flatnonzero(close[i, leaders]) if leaders else ()
        if len(near):
            group[i] = int(near[0])
        else:
            group[i] = len(leaders)
            leaders.append(i)
    sizes = torch.bincount(group, minlength=len(leaders))
    weight = torch.zeros(len(leaders), dtype=torch.float64).index_add_(0, group, strength)
    ranked = sorted(range(len(leaders)), key=lambda g: (-int(sizes[g]), -float(weight[g])))
    if num_images == 1 and int(sizes[ranked[0]]) == 1:
        images = rows.median(dim=0).values[None]
    else:
        picks = ranked[:num_images]
        while len(picks) < num_images:  # fewer rows than images: repeat the strongest
            picks.append(ranked[len(picks) % len(ranked)])
        images = torch.stack([rows[group == g].mean(dim=0) for g in picks])
    return images


# The grid fit of snap_to_grid: intensity scales searched (1 +- GRID_SCALE_SPAN),
# and the least mean resultant length at which the image is snapped
GRID_SCALE_SPAN = 0.02
GRID_MIN_RESULTANT = 0.3
GRID_MAX_BITS = 8


@dataclass(frozen=True)
class GridFit:
    """How snap_to_grid read an estimate: the intensity scale and offset (in
    grid levels) that put it on the grid, the mean resultant length of its
    pixels' phases there (1: every pixel on a level; about 1 / sqrt(pixels):
    no grid), and whether it was snapped."""

    scale: float
    offset: float
    resultant: float
    snapped: bool


def snap_to_grid(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, GridFit]:
    """Snap an estimated image (float, on [0, 1]) to the grid its pixels were
    stored on: levels k / L with L = 2^bits - 1 (study.task.to_float: the model
    sees stored integers divided by L).

    The analytic attack fixes the image's scale through the first layer's
    bias column, the least precise one under Adam (the bias gradient is the
    row's largest, so its step saturates first), so its estimate is the image
    up to an intensity scale a within a few tenths of a percent and a small
    offset c: v = x * L is about a * (k + c). The attacker fits both to the
    grid itself, with no knowledge of the image: for each scale a on a grid
    over 1 +- GRID_SCALE_SPAN (steps of 1 / (8 L): the brightest level moves by
    1/8 of a level), the pixels' phases 2 pi v / a are summed as unit vectors;
    the length of their mean R(a) is 1 when every pixel lies on a level and
    about 1 / sqrt(pixels) for no grid; the best scale is refined tenfold and
    the offset is the mean phase there. The criterion: snap only when
    R >= GRID_MIN_RESULTANT (0.3). For pixel errors about the fitted grid of
    Gaussian spread s (in levels), R = exp(-2 pi^2 s^2), so 0.3 means
    s <= 0.25 level, below which rounding to the nearest level lowers the
    expected squared error (most pixels come back exact); above it rounding
    would add error, and the estimate is returned as it is. Grids finer than
    GRID_MAX_BITS (8) bits are beyond what a float32 Adam update resolves and
    are never snapped. Returns the (snapped or unchanged) float64 image and
    the GridFit."""
    v = x.double().flatten() * (2**bits - 1)
    levels = 2**bits - 1
    if bits > GRID_MAX_BITS or v.numel() < 2:
        return x.double(), GridFit(1.0, 0.0, 0.0, False)

    def resultants(scales: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * v[None, :] / scales[:, None]
        return torch.complex(torch.cos(phase).mean(1), torch.sin(phase).mean(1))

    step = 1.0 / (8 * levels)
    count = int(GRID_SCALE_SPAN / step)
    scales = 1 + step * torch.arange(-count, count + 1, dtype=torch.float64)
    best = float(scales[int(resultants(scales).abs().argmax())])
    fine = best + step / 10 * torch.arange(-10, 11, dtype=torch.float64)
    mean = resultants(fine)
    i = int(mean.abs().argmax())
    scale, resultant = float(fine[i]), float(mean[i].abs())
    offset = float(torch.angle(mean[i])) / (2 * math.pi)
    if resultant < GRID_MIN_RESULTANT:
        return x.double(), GridFit(scale, offset, resultant, False)
    k = torch.round(v / scale - offset).clamp(0, levels)
    return (k / levels).reshape(x.shape), GridFit(scale, offset, resultant, True)


def _adam_recovery(
    update: Mapping[str, torch.Tensor],
    training: LocalTraining,
    layer: tuple[str, str],
    num_images: int,
    global_state: Mapping[str, torch.Tensor],
    group_distance: float,
) -> torch.Tensor | None:
    """analytic_recovery under Adam: (num_images, pixels) float64, or None
    when no active row has an element Adam's step left unsaturated."""
    lr = training.learning_rate * training.steps(num_images)
    gw, sw = adam_step_gradient(update[layer[0]], torch.as_tensor(global_state[layer[0]]), lr)
    gb, sb = adam_step_gradient(update[layer[1]], torch.as_tensor(global_state[layer[1]]), lr)
    active = update[layer[1]] != 0
    if not bool(active.any()):
        raise ValueError("analytic attack: the first layer's bias did not change (no active row)")
    gradient = torch.cat([gb[:, None], gw.flatten(1)], 1)[active]
    deviation = torch.cat([sb[:, None], sw.flatten(1)], 1)[active]
    if num_images == 1:
        x = rank_one_fit(gradient, deviation)
        return None if x is None else x[None]
    ratio = gradient[:, 1:] / gradient[:, :1]
    variance = (deviation[:, 1:] ** 2 + ratio**2 * deviation[:, :1] ** 2) / gradient[:, :1] ** 2
    precision = variance.pow(-1).nan_to_num(nan=0.0, posinf=0.0).sum(1)
    group = torch.full((len(gradient),), -1, dtype=torch.long)
    leaders: list[int] = []
    for i in torch.argsort(precision, descending=True).tolist():
        for g, lead in enumerate(leaders):
            summed = variance[i] + variance[lead]
            both = torch.isfinite(summed)
            if bool(both.any()):
                distance = ((ratio[i] - ratio[lead]) ** 2 / summed)[both].mean()
                if float(distance) < group_distance:
                    group[i] = g
                    break
        else:
            group[i] = len(leaders)
            leaders.append(i)
    sizes = torch.bincount(group, minlength=len(leaders))
    ranked = torch.argsort(sizes, descending=True, stable=True).tolist()
    picks = ranked[:num_images]
    while len(picks) < num_images:  # fewer groups than images: repeat the largest
        picks.append(ranked[len(picks) % len(ranked)])
    images = []
    for g in picks:
        x = rank_one_fit(gradient[group == g], deviation[group == g])
        if x is None:
            return None
        images.append(x)
    return torch.stack(images)


# -------------------------------------------------------------- optimisation
@dataclass(frozen=True)
class ImagePrior:
    """What the attacker expects images to look like, learnt from public
    reference images (the server's held-out set; never the attacked site's):
    their mean and principal components (scikit-learn's PCA), the image model
    x = mean + coefficients @ basis of the generative-prior attacks (Jeon et
    al. 2021 use a GAN; a linear model needs no training and a few dozen
    images). `basis` rows are the components times their standard deviation,
    so coefficients drawn from N(0, 1) are plausible images."""

    mean: np.ndarray  # float32 (C, H, W) on [0, 1]
    basis: np.ndarray  # float32 (k, C * H * W)
    reference_images: int

    @classmethod
    def fit(cls, images: np.ndarray, components: int) -> ImagePrior:
        """Fit on float images (N, C, H, W) on [0, 1]; k = min(components, N - 1)."""
        from sklearn.decomposition import PCA

        if len(images) < 2:
            raise ValueError(f"an image prior needs at least 2 reference images, got {len(images)}")
        flat = np.asarray(images, np.float64).reshape(len(images), -1)
        k = max(0, min(components, len(images) - 1))
        if k == 0:
            basis = np.zeros((0, flat.shape[1]))
            mean = flat.mean(axis=0)
        else:
            pca = PCA(n_components=k, svd_solver="full").fit(flat)
            basis = pca.components_ * np.sqrt(pca.explained_variance_)[:, None]
            mean = pca.mean_
        return cls(
            mean.reshape(images.shape[1:]).astype(np.float32),
            basis.astype(np.float32),
            len(images),
        )

    @property
    def components(self) -> int:
        return len(self.basis)

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(N, k) coefficients -> (N, C, H, W) images, clipped to [0, 1]."""
        flat = torch.from_numpy(self.mean).reshape(1, -1) + coefficients @ torch.from_numpy(
            self.basis
        )
        return flat.clamp(0, 1).reshape(len(coefficients), *self.mean.shape)


@dataclass(frozen=True)
class InversionConfig:
    """Settings of the optimisation attack (Inverting Gradients, with restarts).

    With an ImagePrior the descent runs on the prior's coefficients
    (`prior_components`, step `prior_step_size`), then `pixel_iterations` of
    pixel-level descent (step `step_size`, total-variation weight `tv_weight`)
    refine the best restart; without one it runs on the pixels from uniform
    noise. Each restart takes `iterations` steps of Adam with a cosine-annealed
    step; restart 0 starts at the prior's mean, the others at random.

    `adam_scale`: the attacker's Adam simulates the site's first steps with
    eps = adam_scale x the RMS of each simulated gradient tensor instead of
    1e-8, a smoothed sign with a usable gradient (only used for Adam sites).
    `smooth_beta`: the update of a ReLU network jumps wherever a unit or a
    max-pool switches, so the attacker descends on a smooth surrogate of the
    model (ReLU -> Softplus(beta), MaxPool2d -> a log-sum-exp pool at
    temperature 1 / beta; 0 keeps the exact model); restarts are ranked on the
    exact model. `signed`: step on the sign of the image gradient (as the
    Inverting Gradients code does) instead of the gradient itself.
    `accept_margin`: with a prior, the best restart is kept only when its
    objective beats the prior's mean image by this much (cosine distance),
    else the attacker answers the mean: the update did not support a guess.
    Fitted to an update of pure noise, the descent still lowers the objective
    below the mean image's by up to 0.012 (40 coefficients fitted to noise:
    six 32 px phantom X-rays under local DP-SGD at z = 1), while with no defence
    it lowers it by 0.1 to 0.2: 0.03 separates the two.
    """

    iterations: int = 100
    restarts: int = 2
    step_size: float = 0.003
    tv_weight: float = 0.01
    adam_scale: float = 0.1
    smooth_beta: float = 20.0
    signed: bool = False
    seed: int = 0
    prior_components: int = 40
    prior_step_size: float = 0.1
    pixel_iterations: int = 0
    accept_margin: float = 0.03


@dataclass(frozen=True)
class Inversion:
    """An optimisation attack's result: images on [0, 1], the labels used, the
    final objective of the chosen restart (on the exact model), and the time
    it took."""

    images: np.ndarray  # float32 (N, C, H, W) on [0, 1]
    labels: np.ndarray
    labels_source: str  # "recovered" (from the update) or "known"
    objective: float
    seconds: float
    restart_objectives: list[float] = field(default_factory=list)
    mean_objective: float | None = None  # the prior's mean image on the exact model
    chosen: str = "reconstruction"  # or "prior mean" (see InversionConfig.accept_margin)


def recover_labels(
    model: nn.Module, update: Mapping[str, torch.Tensor], num_outputs: int
) -> np.ndarray | None:
    """iDLG for one multi-label image with BCE: the findings whose head bias
    grew. None when the model has no linear head with `num_outputs` outputs."""
    head = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_outputs:
            head = f"{name}.bias" if name else "bias"
    if head is None or head not in update:
        return None
    return (update[head] > 0).float().numpy()[None]


def simulate_update(
    model: nn.Module,
    start: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    training: LocalTraining,
    *,
    adam_scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """The update the site's training would send for float `images` (on [0, 1])
    from the weights `start`: local - start for every trainable parameter.

    `adam_scale` None: the site's own training, study.task.train_tensors (the
    loop study.task.train runs) on a copy of `model`, with the batches, loss,
    proximal term and optimizer the server configured: the update the site
    sends, bit for bit, but not differentiable. A number: the attacker's
    differentiable surrogate (`differentiable_update`), Adam's eps smoothed
    by that factor (see InversionConfig)."""
    if adam_scale is not None:
        return differentiable_update(model, start, images, targets, training, adam_scale=adam_scale)
    import copy

    site = copy.deepcopy(model).cpu()
    with torch.no_grad():
        for name, p in site.named_parameters():
            p.copy_(torch.as_tensor(start[name]))
    train_tensors(
        site,
        training.modality,
        images.detach().float(),
        targets.detach().float(),
        epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        seed=training.seed,
        proximal_mu=training.proximal_mu,
        optimizer=training.optimizer,
    )
    return parameter_update(start, site)


def differentiable_update(
    model: nn.Module,
    start: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    targets: torch.Tensor,
    training: LocalTraining,
    *,
    adam_scale: float | None = None,
) -> dict[str, torch.Tensor]:
    """The site's update as a differentiable function of the images: what the
    optimisation attack descends on.

    torch's optimizers step in place under no_grad, so the site's training
    cannot be differentiated through; this surrogate takes its steps
    functionally (torch.func.functional_call on `model` from `start`) from the
    same public pieces of study.task: `batch_order`, `loss`, `proximal_term`,
    and the hyper-parameters of `make_optimizer`'s Adam (ADAM_BETAS, ADAM_EPS)
    or plain SGD. `adam_scale`: None takes Adam's step with its own eps; a
    number smooths eps to adam_scale x the RMS of each gradient tensor (plus
    eps), a usable gradient through Adam's near-sign first step."""
    params = {k: torch.as_tensor(v).detach().requires_grad_(True) for k, v in start.items()}
    names = list(params)
    anchor = dict(params)
    first_moment = {k: torch.zeros_like(v) for k, v in params.items()}
    second_moment = {k: torch.zeros_like(v) for k, v in params.items()}
    b1, b2 = ADAM_BETAS
    for step, idx in enumerate(training.batches(len(images)), 1):
        out = functional_call(model, params, (images[idx],))
        value = loss(training.modality, out, targets[idx])
        if training.proximal_mu > 0:
            value = value + proximal_term(
                [params[k] for k in names], [anchor[k] for k in names], training.proximal_mu
            )
        grads = torch.autograd.grad(value, [params[k] for k in names], create_graph=True)
        new = {}
        for k, g in zip(names, grads, strict=True):
            if training.optimizer == "sgd":
                new[k] = params[k] - training.learning_rate * g
                continue
            first_moment[k] = b1 * first_moment[k] + (1 - b1) * g
            second_moment[k] = b2 * second_moment[k] + (1 - b2) * g * g
            m_hat = first_moment[k] / (1 - b1**step)
            v_hat = second_moment[k] / (1 - b2**step)
            eps = ADAM_EPS
            if adam_scale is not None:
                eps = adam_scale * float(g.detach().pow(2).mean().sqrt()) + ADAM_EPS
            new[k] = params[k] - training.learning_rate * m_hat / ((v_hat + 1e-30).sqrt() + eps)
        params = new
    return {k: params[k] - anchor[k] for k in names}


class SoftMaxPool2d(nn.Module):
    """A 2x2 max-pool made smooth: temperature x log-mean-exp over the window
    (plus log 4, so that equal inputs pool to themselves)."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = nn.functional.max_pool2d(x, 2).detach()
        shifted = (x - nn.functional.interpolate(peak, scale_factor=2, mode="nearest")) / (
            self.temperature
        )
        pooled = nn.functional.avg_pool2d(torch.exp(shifted), 2) * 4
        return self.temperature * torch.log(pooled) + peak


def smooth_surrogate(model: nn.Module, beta: float) -> nn.Module:
    """A copy of `model` with ReLU -> Softplus(beta) and 2x2 MaxPool2d ->
    SoftMaxPool2d(1 / beta); same parameters (functional pooling inside a
    forward, as in the U-Net, stays exact)."""
    import copy

    surrogate = copy.deepcopy(model)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus(beta=beta))
            elif isinstance(child, nn.MaxPool2d) and child.kernel_size in (2, (2, 2)):
                setattr(module, name, SoftMaxPool2d(1.0 / beta))
            else:
                swap(child)

    swap(surrogate)
    return surrogate


def cosine_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """1 - cos(a, b) over all tensors together."""
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = torch.sqrt(sum((a[k] ** 2).sum() for k in b))
    nb = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return 1 - dot / (na * nb + 1e-20)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV),
    relative to the mean intensity: a model blind to a global intensity factor
    must not be able to lower the prior by darkening the image."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return (dx + dy) / (x.mean() + 1e-6)


def invert_update(
    model: nn.Module,
    global_state: Mapping[str, torch.Tensor],
    observed: Mapping[str, torch.Tensor],
    training: LocalTraining,
    num_images: int,
    image_shape: tuple[int, ...],
    *,
    targets: np.ndarray | None = None,
    prior: ImagePrior | None = None,
    config: InversionConfig = InversionConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> Inversion:
    """Reconstruct `num_images` images from an observed update.

    `targets`: the labels (or masks) if the attacker is given them; None
    recovers X-ray labels from the update (one image only). `prior`: the
    attacker's image prior (ImagePrior, from public images); None descends on
    raw pixels. `progress(done, total)` is called every few iterations.
    """
    t0 = time.perf_counter()
    model = model.cpu().train()
    start = {k: torch.as_tensor(global_state[k]).float() for k, _ in model.named_parameters()}
    observed = {k: torch.as_tensor(v).float() for k, v in observed.items() if k in start}
    if targets is None:
        if training.modality != "xray" or num_images != 1:
            raise ValueError("labels can be recovered for one X-ray image only; pass targets")
        labels = recover_labels(model, observed, num_outputs=14)
        if labels is None:
            raise ValueError("label recovery needs a linear head with 14 outputs")
        source = "recovered"
    else:
        labels, source = np.asarray(targets, dtype=np.float32), "known"
    if prior is not None and tuple(prior.mean.shape) != tuple(image_shape):
        raise ValueError(f"image prior of shape {prior.mean.shape}, images of shape {image_shape}")
    y = torch.from_numpy(labels.astype(np.float32))
    adam_scale = config.adam_scale if training.optimizer == "adam" else None
    surrogate = smooth_surrogate(model, config.smooth_beta) if config.smooth_beta > 0 else model
    use_prior = prior is not None and prior.components > 0 and config.prior_components > 0
    k = min(config.prior_components, prior.components) if use_prior else 0
    if use_prior:
        prior = ImagePrior(prior.mean, prior.basis[:k], prior.reference_images)
    total = config.restarts * config.iterations + config.pixel_iterations * use_prior
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None and (done[0] % 10 == 0 or done[0] == total):
            progress(done[0], total)

    def objective(m: nn.Module, x: torch.Tensor, scale: float | None) -> torch.Tensor:
        """The descent's objective (differentiable surrogate, `scale` smoothing Adam)."""
        sim = differentiable_update(m, start, x, y, training, adam_scale=scale)
        return cosine_distance(sim, observed)

    def exact(x: torch.Tensor) -> float:
        """The objective on the site's own training (restarts are ranked on it)."""
        return float(cosine_distance(simulate_update(model, start, x, y, training), observed))

    def descend(variable: torch.Tensor, render, lr: float, steps: int, tv: float) -> None:
        opt = torch.optim.Adam([variable], lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            x = render(variable)
            loss = objective(surrogate, x, adam_scale)
            if tv > 0:
                loss = loss + tv * total_variation(x)
            (grad,) = torch.autograd.grad(loss, [variable])
            variable.grad = grad.sign() if config.signed else grad
            opt.step()
            schedule.step()
            if render is _pixels:
                with torch.no_grad():
                    variable.clamp_(0, 1)
            tick()

    restart_objectives = []
    best: tuple[float, torch.Tensor] | None = None
    for restart in range(config.restarts):
        gen = torch.Generator().manual_seed(config.seed * 1000 + restart)
        if use_prior:
            c = (
                torch.zeros(num_images, k)
                if restart == 0
                else torch.randn(num_images, k, generator=gen)
            )
            c.requires_grad_(True)
            descend(c, prior.decode, config.prior_step_size, config.iterations, 0.0)
            x = prior.decode(c.detach())
        else:
            x = torch.rand((num_images, *image_shape), generator=gen).requires_grad_(True)
            descend(x, _pixels, config.step_size, config.iterations, config.tv_weight)
            x = x.detach()
        final = exact(x)
        restart_objectives.append(final)
        if best is None or final < best[0]:
            best = (final, x.clone())
    assert best is not None
    if use_prior and config.pixel_iterations > 0:
        x = best[1].clone().requires_grad_(True)
        descend(x, _pixels, config.step_size, config.pixel_iterations, config.tv_weight)
        final = exact(x.detach())
        if final < best[0]:
            best = (final, x.detach().clone())
    mean_objective, chosen = None, "reconstruction"
    if use_prior:
        # An update the reconstruction explains no better than the prior's mean image
        # (noise of DP, say) tells the attacker nothing: it keeps the mean, the guess
        # with the least expected error, rather than a plausible image drawn at random.
        mean_image = prior.decode(torch.zeros(num_images, k))
        mean_objective = exact(mean_image)
        if best[0] > mean_objective - config.accept_margin:
            best, chosen = (mean_objective, mean_image), "prior mean"
    return Inversion(
        images=best[1].numpy().astype(np.float32),
        labels=labels,
        labels_source=source,
        objective=best[0],
        seconds=time.perf_counter() - t0,
        restart_objectives=restart_objectives,
        mean_objective=mean_objective,
        chosen=chosen,
    )


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """The identity image parametrisation (descent on the pixels themselves)."""
    return x
