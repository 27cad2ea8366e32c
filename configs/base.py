r"""The sections every config in configs/ shares, so that each concept has one name and one default.

Names, across every experiment:

  seed, num_seeds     base seed of a run's own randomness (init, training order); seed i of a
                      run is seed + i
  progress            progress bars (an output option: never changes a result)
  data.*              name, data_dir, image_size, split_seed, then what the experiment adds
  train.model         the model an experiment trains (a name for `ecos_jax.models.get_model`);
                      train.model_kwargs its keyword arguments; train.models a tuple of names
                      where an experiment compares several; a second model (the compression
                      teacher, CoOpt's reuse model) is `<its section>.model`
  train.*             batch_size, learning_rate, then epochs or steps, optimizer
  epsilons            a tuple of floats (inf = non-private) wherever a run sweeps ε
  <privacy>.delta, .accountant, .noise_seed
                      the privacy section: `ecos` in the ECOS applications (with epsilon and the
                      protocol's settings), `privacy` everywhere else. noise_seed None draws DP
                      noise from OS entropy; an int is for reproducible research only.

    >>> c = ml_collections.ConfigDict(); base.common(c, num_seeds=3)
    >>> c.data = base.data(n_train=1000)
"""

import ml_collections
from ml_collections import config_dict

DATASET = "digits_mnist_c"     # the embedded digits + MNIST-C domains
DELTA = 1e-5                   # δ of every (ε, δ) claim unless a config says otherwise


def common(c: ml_collections.ConfigDict, *, seed: int = 0, num_seeds: int | None = None,
           progress: bool = True) -> ml_collections.ConfigDict:
    """Sets the top-level seed fields and output options on `c`; returns it."""
    c.seed = seed
    if num_seeds is not None:
        c.num_seeds = num_seeds
    c.progress = progress
    # Local devices the run may spread its training over (ecos_jax.parallel.mesh.local_mesh):
    # 0 = all of them, n = the first n. An execution option like `progress`: results equal
    # the one-device run (to float tolerance where a gradient is summed across devices).
    c.num_devices = 0
    return c


def data(*, name: str = DATASET, **fields) -> ml_collections.ConfigDict:
    """The data section: dataset name, where it lives, image size, the split's seed, `fields`."""
    d = ml_collections.ConfigDict()
    d.name = name                           # or a prepared tfds catalogue name, e.g. "mnist,svhn_cropped"
    d.data_dir = config_dict.placeholder(str)   # default: $ECOS_JAX_DATA_DIR or ~/.cache/ecos_jax
    d.image_size = 28
    d.split_seed = 0
    d.update(fields)
    return d


def privacy_fields(d: ml_collections.ConfigDict, *, delta: float = DELTA,
                   accountant: str = "rdp") -> ml_collections.ConfigDict:
    """Sets delta, accountant and noise_seed on a privacy section `d`; returns it."""
    d.delta = delta
    d.accountant = accountant
    # None: DP noise keyed from OS entropy. An int: reproducible research only (every ledger
    # says so).
    d.noise_seed = config_dict.placeholder(int)
    return d


def privacy(**fields) -> ml_collections.ConfigDict:
    """The privacy section of the non-ECOS experiments: delta, accountant, noise_seed, `fields`."""
    d = privacy_fields(ml_collections.ConfigDict(), delta=fields.pop("delta", DELTA),
                       accountant=fields.pop("accountant", "rdp"))
    d.update(fields)
    return d


def input_features() -> ml_collections.ConfigDict:
    """The features section of the DP-trained experiments (train_dp, data_valuation): what the
    model sees. name "pixels", or "scattering" (ScatterNet features, `ecos_jax.scattering`, J
    scales, L angles) with "group_norm" (per example over num_groups, data-independent) or
    "none" normalisation; computed batch_size images per call and cached under cache_dir by
    content hash (None: no cache), one cache for every experiment."""
    f = ml_collections.ConfigDict()
    f.name = "pixels"
    f.J = 2
    f.L = 8
    f.normalization = "none"
    f.num_groups = 27
    f.batch_size = 500
    f.cache_dir = "~/.cache/ecos_jax/scattering"
    return f


def ecos() -> ml_collections.ConfigDict:
    """The ECOS section: the protocol's settings and the client's privacy (ε, δ, noise seed)."""
    e = ml_collections.ConfigDict()
    e.num_centroids = 30
    e.kmeans_iters = 20
    e.epsilon = 0.58
    privacy_fields(e, delta=DELTA, accountant="pld")
    # Each client's seed is derived from noise_seed, its domain and the config hash
    # (ecos_runner.client_noise_seed), and every release still draws fresh noise.
    e.proximity = 0.5                       # share of each cluster's picks closest to its centroid
    e.centroid_dtype = "float32"            # wire encoding down: "float32" | "float16"
    e.count_dtype = "float32"               # wire encoding up: "float32" | "int16" (rounded after noise)
    return e


def train(*, model: str | None = "cnn", batch_size: int = 64, learning_rate: float = 1e-3,
          **fields) -> ml_collections.ConfigDict:
    """A training section: the model's name, batch size, learning rate, then `fields`.

    model=None leaves `model` out, for a section that compares several (`models=(...)`).
    """
    t = ml_collections.ConfigDict()
    if model is not None:
        t.model = model
    t.batch_size = batch_size
    t.learning_rate = learning_rate
    t.update(fields)
    return t
