"""A pretrained model from a local folder in diffusers' format: a UNet2DModel (config.json + safetensors
weights), optionally inside a DDPM/DDIM pipeline folder with its scheduler config -- e.g. a user's
download of google/ddpm-celebahq-256. The only module that imports diffusers (the `diffusers` extra).

Two layouts are read:

    FOLDER/config.json  diffusion_pytorch_model.safetensors  [scheduler_config.json]     (UNet2DModel.save_pretrained)
    FOLDER/model_index.json  unet/{config.json, *.safetensors}  scheduler/scheduler_config.json  (a pipeline)

The network is built from its config by diffusers and the weights are read with safetensors (pickled
.bin / .ckpt / .pt files are refused, never unpickled). It is wrapped in the one contract,
`net(x_t, c_noise, y=None) -> raw output` (UNet2DModel(...).sample; `y` = class labels where the model
has class embeddings). The noise levels are diffusers' own betas of the scheduler config (any beta_schedule,
trained_betas, rescale_betas_zero_snr), so our samplers walk exactly the schedule the model was trained on;
prediction_type maps to eps / v / x0. Reading the folder (`inspect_folder`) needs no diffusers, so a
folder we cannot use is refused with one message even where diffusers is not installed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import UserError

INSTALL = "pip install -e '.[diffusers]'"
SUPPORTED = ("multidiff opens a diffusers UNet2DModel folder: config.json + diffusion_pytorch_model.safetensors "
             "(+ scheduler_config.json), or a DDPM/DDIM pipeline folder (model_index.json, unet/, scheduler/) such as "
             "a download of google/ddpm-celebahq-256")
PICKLED = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
WEIGHTS = "diffusion_pytorch_model"
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# what a pipeline's components say about it, when it is not an image denoiser we can run
TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "prior", "image_encoder")
LATENT_PARTS = ("vae", "vqvae", "movq")
DEFAULT_SCHEDULER = {"_class_name": "DDPMScheduler"}  # diffusers' DDPM defaults: linear 1e-4..0.02, T = 1000, epsilon


class FolderError(UserError):
    pass


def _refuse(why: str) -> FolderError:
    return FolderError(f"{why}. {SUPPORTED}")


@dataclass
class FolderInfo:
    """What a diffusers folder holds: the UNet's config and weight files, and the scheduler config (None:
    the folder has none and diffusers' DDPM defaults are assumed)."""
    root: Path
    config_file: Path
    config: dict
    weights: list[Path]
    scheduler_file: Path | None = None
    scheduler: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        s = self.config.get("sample_size", 32)
        return int(s if isinstance(s, int) else s[0])

    @property
    def channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_class_embeds") or 0)


def looks_like_model_folder(path) -> bool:
    """A folder that is no multidiff run (no config.toml) but holds what a diffusers model folder holds
    (so its problems are named in diffusers' terms)."""
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "config.toml").exists():
        return False
    marks = ("model_index.json", "config.json", "unet", "scheduler", "scheduler_config.json")
    return any((p / m).exists() for m in marks) or any(
        f.suffix in (".safetensors", *PICKLED) for f in p.iterdir() if f.is_file())


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FolderError(f"cannot read '{path}': {e}; it must be the JSON file diffusers wrote") from None
    if not isinstance(data, dict):
        raise FolderError(f"'{path}' is not a JSON object; it must be the JSON file diffusers wrote")
    return data


def _check_pipeline(index_file: Path) -> None:
    index = _read_json(index_file)
    name = index.get("_class_name", "a pipeline")
    parts = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[-1]}
    text = [k for k in parts if k in TEXT_PARTS]
    unet = parts.get("unet", [None, None])[-1]
    if text or unet == "UNet2DConditionModel":
        raise _refuse(f"'{index_file.parent}' is a {name} folder, a text-to-image model "
                      f"({', '.join(text) or 'a UNet2DConditionModel'}): not supported")
    latent = [k for k in parts if k in LATENT_PARTS]
    if latent:
        raise _refuse(f"'{index_file.parent}' is a {name} folder: a latent-diffusion pipeline (its {latent[0]} "
                      "decodes the UNet's latents), not supported")
    if "unet" not in parts:
        raise _refuse(f"'{index_file.parent}' is a {name} folder without a UNet ({', '.join(parts) or 'no parts'})")


def _weight_files(unet_dir: Path) -> list[Path]:
    index = unet_dir / f"{WEIGHTS}.safetensors.index.json"
    if index.is_file():  # sharded
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (unet_dir / s).is_file()]
        if not shards or missing:
            raise FolderError(f"'{index}' names weight shards that are not there ({', '.join(missing[:3]) or 'none'}); "
                              "download the whole folder again")
        return [unet_dir / s for s in shards]
    plain = unet_dir / f"{WEIGHTS}.safetensors"
    if plain.is_file():
        return [plain]
    variants = sorted(unet_dir.glob(f"{WEIGHTS}.*.safetensors"))  # e.g. .fp16.safetensors
    if variants:
        return variants[:1]
    others = sorted(unet_dir.glob("*.safetensors"))
    if len(others) == 1:
        return others
    pickled = sorted(f.name for f in unet_dir.iterdir() if f.suffix in PICKLED)
    if pickled:
        raise _refuse(f"'{unet_dir}' holds pickled weights only ({', '.join(pickled[:3])}); they are never loaded "
                      "(unpickling runs code from the file): multidiff reads safetensors weights only. If you trust "
                      "the file, convert it once with diffusers: UNet2DModel.from_pretrained(FOLDER)"
                      ".save_pretrained(FOLDER, safe_serialization=True)")
    raise _refuse(f"'{unet_dir}' has a config.json but no {WEIGHTS}.safetensors beside it"
                  + (f" ({len(others)} other .safetensors files: which one?)" if others else ""))


def _check_unet_config(cfg: dict, file: Path) -> None:
    cls = cfg.get("_class_name")
    if cls == "UNet2DConditionModel":
        raise _refuse(f"'{file}' describes a UNet2DConditionModel, the denoiser of a text-to-image model: not "
                      "supported")
    if cls and ("Autoencoder" in cls or cls in ("VQModel", "ConsistencyDecoderVAE")):
        raise _refuse(f"'{file}' describes an autoencoder (VAE) only, a {cls}: it has no denoiser to sample with")
    if cls != "UNet2DModel":
        raise _refuse(f"'{file}' describes a {cls or 'model of no _class_name'}, not a UNet2DModel")

    def bad(why):
        raise _refuse(f"'{file}': {why}")
    size = cfg.get("sample_size", 32)
    if not isinstance(size, int):
        if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1] and isinstance(size[0], int)):
            bad(f"sample_size {size} is not square; multidiff's image models are square")
    if cfg.get("in_channels", 3) not in (1, 3):
        bad(f"in_channels = {cfg.get('in_channels')}: an image model has 1 or 3 channels (4 are usually the latents "
            "of a latent-diffusion model, which needs its VAE)")
    out = cfg.get("out_channels", 3)
    if out not in (cfg.get("in_channels", 3), 2 * cfg.get("in_channels", 3)):
        bad(f"out_channels = {out} for in_channels = {cfg.get('in_channels', 3)}")
    if cfg.get("time_embedding_type", "positional") != "positional":
        bad(f"time_embedding_type = {cfg.get('time_embedding_type')!r} (a score-SDE / VE model): only 'positional' "
            "(DDPM-style) models are supported")
    if cfg.get("class_embed_type") is not None:
        bad(f"class_embed_type = {cfg.get('class_embed_type')!r}: only plain class labels (num_class_embeds) are "
            "supported")


def inspect_folder(path) -> FolderInfo:
    """The UNet config, weight files and scheduler config of a diffusers folder, or one FolderError naming
    what is wrong and what is supported. Reads JSON only: no diffusers needed, no weights loaded."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FolderError(f"'{root}' is not a folder. {SUPPORTED}")
    if (root / "model_index.json").is_file():
        _check_pipeline(root / "model_index.json")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    config_file = unet_dir / "config.json"
    if not config_file.is_file():
        found = sorted(f.name for f in root.iterdir())[:4]
        raise _refuse(f"'{root}' is not a multidiff run (no config.toml) and has no UNet config.json (nor "
                      f"unet/config.json){' -- it holds ' + ', '.join(found) if found else ''}")
    config = _read_json(config_file)
    _check_unet_config(config, config_file)
    info = FolderInfo(root, config_file, config, _weight_files(unet_dir))
    for cand in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                 unet_dir / "scheduler_config.json"):
        if cand.is_file():
            info.scheduler_file, info.scheduler = cand, _read_json(cand)
            break
    else:
        info.notes.append("no scheduler_config.json: diffusers' DDPM defaults assumed (linear betas 1e-4..0.02, "
                          "T = 1000, epsilon prediction)")
    return info


# ---- what needs diffusers --------------------------------------------------------------------------
def _diffusers():
    try:
        import diffusers  # the optional extra: only here
    except ImportError:
        raise UserError(f"opening a diffusers model folder needs the diffusers package: {INSTALL}") from None
    return diffusers


@dataclass
class SchedulerSettings:
    """What a scheduler config says about the noise levels and their use."""
    class_name: str
    betas: list[float]            # diffusers' own (float32) betas, as float64 values
    prediction: str               # eps | v | x0
    beta_schedule: str
    beta_start: float
    beta_end: float
    zero_terminal_snr: bool
    clip_x0: float                # clip_sample_range when clip_sample, else 0 (off)
    spacing: str                  # leading | trailing | linspace
    steps_offset: int
    variance: str                 # our ddpm's step variance: posterior (fixed_small) | beta (fixed_large)
    notes: list[str] = field(default_factory=list)  # what differs from diffusers' own use of this config


def scheduler_settings(info: FolderInfo) -> SchedulerSettings:
    """The folder's scheduler config through diffusers' own scheduler class (its defaults fill missing keys)."""
    D = _diffusers()
    cfg = info.scheduler if info.scheduler is not None else DEFAULT_SCHEDULER
    where = info.scheduler_file or "the DDPM defaults"
    name = cfg.get("_class_name", "DDPMScheduler")
    cls = getattr(D, name, None)
    if not (isinstance(cls, type) and issubclass(cls, D.SchedulerMixin)):
        raise _refuse(f"'{where}' names the scheduler {name!r}, which this diffusers ({D.__version__}) does not have")
    try:
        sched = cls.from_config(cfg)
    except Exception as e:  # diffusers raises many kinds for a config it cannot use
        raise _refuse(f"'{where}': diffusers cannot build its {name}: {e}") from None
    c = sched.config
    betas = getattr(sched, "betas", None)
    if not isinstance(betas, torch.Tensor) or betas.ndim != 1 or len(betas) != c.get("num_train_timesteps"):
        raise _refuse(f"'{where}': a {name} has no discrete beta schedule (a flow-matching or VE scheduler); "
                      "only DDPM-style (VP) schedules are supported")
    pred = c.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise _refuse(f"'{where}': prediction_type {pred!r} is not one of {', '.join(PREDICTIONS)}")
    spacing = c.get("timestep_spacing", "leading")
    notes = []
    if c.get("thresholding", False):
        notes.append("its dynamic thresholding is not used (x0 is clamped to clip_sample_range where clip_sample)")
    if not c.get("set_alpha_to_one", True):
        notes.append("set_alpha_to_one = false: our ddim's last step still goes to clean data")
    if spacing not in ("leading", "trailing", "linspace"):
        notes.append(f"timestep_spacing {spacing!r} is not one of ours: 'leading' used")
    return SchedulerSettings(
        class_name=name, betas=betas.double().tolist(), prediction=PREDICTIONS[pred],
        beta_schedule=str(c.get("beta_schedule", "linear")), beta_start=float(c.get("beta_start", 1e-4)),
        beta_end=float(c.get("beta_end", 0.02)), zero_terminal_snr=bool(c.get("rescale_betas_zero_snr", False)),
        clip_x0=float(c.get("clip_sample_range", 1.0)) if c.get("clip_sample", False) else 0.0,
        spacing=spacing if spacing in ("leading", "trailing", "linspace") else "leading",
        steps_offset=int(c.get("steps_offset", 0) or 0),
        variance="beta" if str(c.get("variance_type", "fixed_small")).startswith("fixed_large") else "posterior",
        notes=notes)


class DiffusersUNet(torch.nn.Module):
    """A diffusers UNet2DModel in the one contract: `net(x_t, c_noise, y=None)` -> its raw output. A model
    that also predicts its variance (out_channels = 2 x in_channels) gives its first half, the mean's
    prediction (the samplers use fixed variances)."""

    def __init__(self, unet: torch.nn.Module, num_classes: int = 0):
        super().__init__()
        self.unet, self.num_classes = unet, num_classes

    def middle_block(self) -> torch.nn.Module:
        """The bottleneck's last block: what a feature discriminator reads (nn/discriminator.py)."""
        return self.unet.mid_block

    def forward(self, x, t, y=None):
        kw = {}
        if self.num_classes:
            if y is None:
                raise UserError("this diffusers model is class-conditional with no unconditional (null) class: it "
                                "needs a class label, which `multidiff inpaint` does not take; use `multidiff sample`")
            if bool(((y < 0) | (y >= self.num_classes)).any()):
                raise UserError(f"this diffusers model knows classes 0..{self.num_classes - 1} and has no null class, "
                                "so classifier-free guidance (--guidance) is not available for it")
            kw["class_labels"] = y.long()
        out = self.unet(x, t, **kw).sample
        return out[:, :x.shape[1]] if out.shape[1] != x.shape[1] else out


def load_unet(info: FolderInfo) -> DiffusersUNet:
    """The UNet2DModel of `info` built by diffusers from its config, with its safetensors weights (float32)."""
    D = _diffusers()
    try:
        unet = D.UNet2DModel.from_config(info.config)
    except Exception as e:
        raise _refuse(f"'{info.config_file}': diffusers ({D.__version__}) cannot build a UNet2DModel from it: {e}") \
            from None
    tensors = {}
    for f in info.weights:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise FolderError(f"cannot read '{f}': {e}. The file is damaged or not a safetensors file; download "
                              "it again") from None
    own = unet.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"{len(missing)} tensors missing (e.g. {missing[0]})"] if missing else []) + (
            [f"{len(extra)} unexpected tensors (e.g. {extra[0]})"] if extra else []) + (
            [f"{len(shapes)} tensors of another shape (e.g. {shapes[0]}: {tuple(tensors[shapes[0]].shape)} in the "
             f"file, {tuple(own[shapes[0]].shape)} by the config)"] if shapes else [])
        where = info.weights[0] if len(info.weights) == 1 else info.weights[0].parent
        raise FolderError(f"the weights in '{where}' do not fit '{info.config_file}' ({'; '.join(parts)}): "
                          "the config and the weights come from different models; put the config.json that was "
                          "saved with these weights beside them")
    unet.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    return DiffusersUNet(unet.float().eval(), info.num_classes)
