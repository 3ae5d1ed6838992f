"""Noise schedules: betas -> alphas_cumprod -> sigmas, spacings, Karras sigmas.

Everything here is plain float64 data computed once. Two equivalent views of
one forward process are used throughout:

* variance-preserving (VP): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
* variance-exploding (VE):  x = x0 + sigma eps, with sigma_t = sqrt((1 - abar_t) / abar_t)

so x_VE = x_VP / sqrt(abar) and abar = 1 / (1 + sigma^2). Fractional training
timesteps are defined by linear interpolation of log(sigma) between integer
steps, which is what k-diffusion and diffusers' Karras path do.

The continuous-time objectives have level maps of their own with the same interface
(sigma_at / t_at / alpha_bar_at / levels): FlowSchedule (flow matching, x_t = (1 - t) x0 + t eps
is the VE path at sigma = t / (1 - t), scaled) and EDMSchedule. Every one of them turns sigma into
the network's noise input on the same [0, T - 1] scale, so samplers and networks need not know
which objective a model was trained with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SPACINGS = ("leading", "trailing", "linspace", "karras")
# A finite stand-in for sigma = inf (zero terminal SNR) where a sampler works in
# VE space; abar = 2**-24 is the value diffusers uses for the same purpose.
ZERO_SNR_SIGMA = 4096.0


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).detach().clone()


@dataclass(frozen=True)
class Levels:
    """The noise levels a sampler walks through, highest first.

    sigmas: [N + 1] VE sigmas, the last one 0 (clean data).
    ts:     [N] training timesteps (possibly fractional) the model sees at sigmas[:-1].
    """

    sigmas: torch.Tensor
    ts: torch.Tensor

    def __post_init__(self):
        if self.sigmas.ndim != 1 or self.ts.ndim != 1 or len(self.sigmas) != len(self.ts) + 1:
            raise ValueError(
                f"Levels needs sigmas [N+1] and ts [N]; got {tuple(self.sigmas.shape)} and {tuple(self.ts.shape)}"
            )
        if len(self.ts) < 1:
            raise ValueError("Levels needs at least one sampling step")
        if float(self.sigmas[-1]) != 0.0:
            raise ValueError("the last sigma of a sampling schedule must be 0 (clean data)")
        if bool((self.sigmas[1:] > self.sigmas[:-1]).any()):
            raise ValueError("sampling sigmas must be non-increasing (highest noise first)")

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar for every level; exact 0 for sigma = inf and 1 for sigma = 0."""
        return 1.0 / (1.0 + self.sigmas**2)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class Schedule:
    """A discrete-time diffusion schedule of T training steps (t = 0 .. T-1)."""

    betas: torch.Tensor

    def __post_init__(self):
        b = self.betas
        if b.ndim != 1 or len(b) < 2:
            raise ValueError(f"betas must be a 1-D tensor of at least 2 steps, got shape {tuple(b.shape)}")
        if b.dtype != torch.float64:
            object.__setattr__(self, "betas", b.to(torch.float64))
        if not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        ac = torch.cumprod(1.0 - self.betas, 0)
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "sigmas", ((1.0 - ac) / ac).sqrt())
        object.__setattr__(self, "log_sigmas", self.sigmas.log())

    # ---- constructors -------------------------------------------------------
    @classmethod
    def from_betas(cls, betas) -> "Schedule":
        return cls(_f64(betas))

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 over T = 1000."""
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, T: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> "Schedule":
        """Latent-diffusion / Stable Diffusion: sqrt(beta) linear."""
        return cls(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Nichol & Dhariwal 2021: abar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2."""
        return cls(_betas_from_alpha_bar(lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T, max_beta))

    @classmethod
    def sigmoid(cls, T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                max_beta: float = 0.999) -> "Schedule":
        """Jabri et al. 2022 (RIN): abar follows a shifted, scaled sigmoid of t/T."""

        def abar(u: float) -> float:
            v_start, v_end = _sig(start / tau), _sig(end / tau)
            return (v_end - _sig((u * (end - start) + start) / tau)) / (v_end - v_start)

        return cls(_betas_from_alpha_bar(abar, T, max_beta))

    @classmethod
    def named(cls, name: str, T: int = 1000, *, beta_start: float | None = None, beta_end: float | None = None,
              zero_terminal_snr: bool = False) -> "Schedule":
        """A schedule of SCHEDULES by name. beta_start / beta_end (None: the constructor's default)
        set the range of the schedules that have one (BETA_RANGE_SCHEDULES); the others define abar
        directly and ignore them. zero_terminal_snr rescales the result (Lin et al. 2023)."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {tuple(SCHEDULES)}")
        betas = {"beta_start": beta_start, "beta_end": beta_end} if name in BETA_RANGE_SCHEDULES else {}
        sched = SCHEDULES[name](T, **{k: v for k, v in betas.items() if v is not None})
        return sched.rescale_zero_terminal_snr() if zero_terminal_snr else sched

    def rescale_zero_terminal_snr(self) -> "Schedule":
        """Lin et al. 2023: shift/scale sqrt(abar) so the last step is pure noise (abar_T = 0)."""
        sq = self.alphas_cumprod.sqrt()
        first, last = sq[0].item(), sq[-1].item()
        sq = (sq - last) * first / (first - last)
        ac = sq**2
        alphas = torch.cat([ac[:1], ac[1:] / ac[:-1]])
        return Schedule(1.0 - alphas)

    # ---- basic quantities ---------------------------------------------------
    @property
    def T(self) -> int:
        return len(self.betas)

    @property
    def zero_terminal_snr(self) -> bool:
        return float(self.alphas_cumprod[-1]) == 0.0

    def snr(self, t) -> torch.Tensor:
        """Signal-to-noise ratio abar / (1 - abar) = 1 / sigma^2 at (fractional) t."""
        return self.sigma_at(t) ** -2

    def sigma_at(self, t) -> torch.Tensor:
        """VE sigma at (fractional) training timesteps, log-linear between integers."""
        t = _f64(t)
        if bool(((t < 0) | (t > self.T - 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {self.T - 1}], got min {t.min().item()} max {t.max().item()}")
        lo = t.floor().clamp(0, self.T - 2).long()
        w = t - lo
        ls = self.log_sigmas
        # where w is 0 the upper neighbour may be +inf (zero terminal SNR): don't touch it
        mixed = torch.where(w > 0, (1 - w) * ls[lo] + w * ls[lo + 1], ls[lo])
        mixed = torch.where(w >= 1, ls[lo + 1], mixed)
        return mixed.exp()

    def alpha_bar_at(self, t) -> torch.Tensor:
        return 1.0 / (1.0 + self.sigma_at(t) ** 2)

    def t_at(self, sigma) -> torch.Tensor:
        """Inverse of sigma_at; sigmas outside the schedule clamp to t = 0 or T - 1."""
        s = _f64(sigma)
        ls = self.log_sigmas
        finite_max = ls[-2] if self.zero_terminal_snr else ls[-1]
        logs = s.log()
        idx = torch.searchsorted(ls, logs.clamp(max=finite_max).reshape(-1)).reshape(logs.shape)
        idx = idx.clamp(1, self.T - 1)
        lo = idx - 1
        w = ((logs - ls[lo]) / (ls[idx] - ls[lo])).nan_to_num(0.0).clamp(0, 1)
        t = lo.to(torch.float64) + w
        t = torch.where(logs <= ls[0], torch.zeros_like(t), t)
        return torch.where(logs >= ls[-1], torch.full_like(t, self.T - 1), t)

    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """Closed-form q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), t per sample [B] or scalar."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        ab = self.alpha_bar_at(t)
        if ab.ndim == 1 and len(ab) != x0.shape[0]:
            raise ValueError(f"t has {len(ab)} entries but x0 has batch size {x0.shape[0]}")
        ab = ab.reshape(-1, *([1] * (x0.ndim - 1))) if ab.ndim == 1 else ab
        # coefficients in float64, applied in the data's dtype (no float64 copies of big tensors)
        a, s = ab.sqrt().to(x0.device, x0.dtype), (1 - ab).sqrt().to(x0.device, x0.dtype)
        return a * x0 + s * noise

    # ---- inference spacings ------------------------------------------------
    def timesteps(self, steps: int, spacing: str = "leading", offset: int = 0) -> torch.Tensor:
        """Descending training timesteps for `steps` sampling steps.

        leading:  0, T//N, 2T//N, ... (DDIM paper / diffusers 'leading'), plus `offset`
        trailing: T-1 down in strides of T/N (Lin et al. 2023; starts at the noisiest step)
        linspace: N evenly spaced (fractional) timesteps from T-1 to 0
        """
        self._check_steps(steps)
        T = self.T
        if spacing == "leading":
            ts = torch.arange(steps, dtype=torch.float64) * (T // steps) + offset
        elif spacing == "trailing":
            ts = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1)[:steps].flip(0)
        elif spacing == "linspace":
            ts = torch.linspace(0, T - 1, steps, dtype=torch.float64)
        else:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS[:3]} (or 'karras' for sigmas)")
        if bool((ts > T - 1).any()):
            raise ValueError(f"offset {offset} pushes timesteps past T - 1 = {T - 1}")
        return ts.flip(0)

    def karras_sigmas(self, steps: int, rho: float = 7.0, sigma_min: float | None = None,
                      sigma_max: float | None = None) -> torch.Tensor:
        """Karras et al. 2022 eq. 5: [steps] sigmas uniform in sigma^(1/rho), highest first."""
        self._check_steps(steps, allow_beyond_T=True)
        smin = float(self.sigmas[0]) if sigma_min is None else sigma_min
        smax = self._finite_sigma_max() if sigma_max is None else sigma_max
        return karras_sigmas(steps, smin, smax, rho)

    def levels(self, steps: int | None = None, spacing: str = "leading", *, timesteps=None, sigmas=None,
               rho: float = 7.0) -> Levels:
        """The sigmas/timesteps a sampler walks through, from exactly one of: (steps, spacing),
        explicit training `timesteps`, explicit `sigmas`, or both paired (e.g. DiffWave's
        inference schedule with its aligned fractional timesteps)."""
        if timesteps is not None or sigmas is not None:
            return explicit_levels(self, timesteps, sigmas)
        if steps is None:
            raise ValueError("give `steps` (with a spacing), or explicit `timesteps` / `sigmas`")
        if spacing == "karras":
            sig = self.karras_sigmas(steps, rho=rho)
            return Levels(torch.cat([sig, sig.new_zeros(1)]), self.t_at(sig))
        ts = self.timesteps(steps, spacing)
        return Levels(torch.cat([self.sigma_at(ts), ts.new_zeros(1)]), ts)

    def align_betas(self, inference_betas) -> torch.Tensor:
        """Fractional training steps whose noise level matches each step of a short inference
        schedule (DiffWave's fast sampling, Kong et al. 2021 appendix): for each inference abar_s,
        the t with sqrt(abar) interpolated linearly between neighbouring training steps.
        Returned in ascending order, like the inference betas."""
        inf_ab = torch.cumprod(1 - _f64(inference_betas), 0)
        sq = self.alphas_cumprod.sqrt()
        out = []
        for s, ab in enumerate(inf_ab.sqrt()):
            hits = ((sq[1:] <= ab) & (ab <= sq[:-1])).nonzero()
            if len(hits) == 0:
                raise ValueError(
                    f"inference step {s} (abar {float(ab) ** 2:.6g}) lies outside the training schedule "
                    f"(abar from {float(self.alphas_cumprod[0]):.6g} to {float(self.alphas_cumprod[-1]):.6g})")
            t = int(hits[0])
            out.append(t + float((sq[t] - ab) / (sq[t] - sq[t + 1])))
        return _f64(out)

    # ---- helpers -----------------------------------------------------------
    def _finite_sigma_max(self) -> float:
        return ZERO_SNR_SIGMA if self.zero_terminal_snr else float(self.sigmas[-1])

    def _check_steps(self, steps, allow_beyond_T: bool = False):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if steps > self.T and not allow_beyond_T:
            raise ValueError(f"steps={steps} exceeds the schedule's T={self.T} training timesteps")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 eq. 5: [steps] sigmas uniform in sigma^(1/rho) from sigma_max down to sigma_min."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def explicit_levels(sched, timesteps=None, sigmas=None) -> Levels:
    """Levels from explicit network noise inputs (`timesteps`), `sigmas`, or both paired; the
    schedule converts one into the other (sigma_at / t_at)."""
    if timesteps is not None:
        ts = _f64(timesteps).reshape(-1)
        if sigmas is None:
            sig = sched.sigma_at(ts)
        if bool((ts[1:] > ts[:-1]).any()):
            raise ValueError("explicit timesteps must be descending (noisiest first)")
    if sigmas is not None:
        sig = _f64(sigmas).reshape(-1)
        if len(sig) and float(sig[-1]) == 0.0:
            sig = sig[:-1]
        if bool((sig <= 0).any()):
            raise ValueError("explicit sigmas must be positive (a final 0 is added for you)")
        if timesteps is None:
            ts = sched.t_at(sig)
        elif len(ts) != len(sig):
            raise ValueError(f"paired timesteps ({len(ts)}) and sigmas ({len(sig)}) differ in length")
    return Levels(torch.cat([sig, sig.new_zeros(1)]), ts)


class ContinuousSchedule:
    """The noise levels of a continuous-time objective (flow matching, EDM): sigma in (0, inf] and
    the network's noise input c_noise = t_at(sigma).

    c_noise is put on the scale of a discrete schedule's timesteps, [0, T - 1] with T = [diffusion]
    timesteps, so every network takes it unchanged: the sinusoidal embeddings of the U-Nets and the
    3D U-Net, and DiffWave's step table (interpolated between its T rows). Only the objective's own
    map from sigma to c_noise differs (FlowSchedule, EDMSchedule).

    Spacings for `levels(steps, spacing)`: 'karras' is Karras et al.'s rho-ramp over
    [sigma_min, sigma_max]; 'leading', 'trailing' and 'linspace' all mean `steps` levels uniform in
    the objective's own time variable (continuous time has no off-by-one to choose), highest first.
    """

    zero_terminal_snr = False

    def __init__(self, T: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not isinstance(T, int) or isinstance(T, bool) or T < 2:
            raise ValueError(f"T (the network's noise input spans [0, T - 1]) must be an integer >= 2, got {T!r}")
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.T, self.sigma_min, self.sigma_max = T, float(sigma_min), float(sigma_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T}, sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    # ---- what a subclass defines -----------------------------------------------------------
    def sigma_at(self, t) -> torch.Tensor:
        """VE sigma at network noise inputs t in [0, T - 1]."""
        raise NotImplementedError

    def t_at(self, sigma) -> torch.Tensor:
        """The network noise input at VE sigma (clamped to [0, T - 1])."""
        raise NotImplementedError

    def uniform_levels(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigmas [steps], ts [steps]) uniform in the objective's own time, highest first."""
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------------
    def alpha_bar_at(self, t) -> torch.Tensor:
        return 1.0 / (1.0 + self.sigma_at(t) ** 2)

    def snr(self, t) -> torch.Tensor:
        return self.sigma_at(t) ** -2

    def karras_sigmas(self, steps: int, rho: float = 7.0, sigma_min: float | None = None,
                      sigma_max: float | None = None) -> torch.Tensor:
        _check_steps(steps)
        return karras_sigmas(steps, self.sigma_min if sigma_min is None else sigma_min,
                             self.sigma_max if sigma_max is None else sigma_max, rho)

    def levels(self, steps: int | None = None, spacing: str = "leading", *, timesteps=None, sigmas=None,
               rho: float = 7.0) -> Levels:
        """As Schedule.levels; see the class docstring for what the spacings mean here."""
        if timesteps is not None or sigmas is not None:
            return explicit_levels(self, timesteps, sigmas)
        if steps is None:
            raise ValueError("give `steps` (with a spacing), or explicit `timesteps` / `sigmas`")
        if spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
        _check_steps(steps)
        if spacing == "karras":
            sig = self.karras_sigmas(steps, rho=rho)
            ts = self.t_at(sig)
        else:
            sig, ts = self.uniform_levels(steps)
        return Levels(torch.cat([sig, sig.new_zeros(1)]), ts)

    def _check_t(self, t) -> torch.Tensor:
        t = _f64(t)
        if bool(((t < 0) | (t > self.T - 1)).any()):
            raise ValueError(f"noise inputs must lie in [0, {self.T - 1}], got min {t.min().item()} "
                             f"max {t.max().item()}")
        return t


class FlowSchedule(ContinuousSchedule):
    """Rectified flow / flow matching: x_t = (1 - t) x0 + t eps, t in [0, 1] (t = 1 is pure noise).
    The same Gaussian path as VE x = x0 + sigma eps with sigma = t / (1 - t), scaled by 1 - t.
    Network noise input c_noise = t (T - 1); uniform levels are t = 1, 1 - 1/N, ..., 1/N."""

    zero_terminal_snr = True  # its top level t = 1 is pure noise (sigma = inf)

    def time(self, sigma) -> torch.Tensor:
        """Flow time t = sigma / (1 + sigma) (1 at sigma = inf)."""
        s = _f64(sigma)
        if bool((s < 0).any()):
            raise ValueError("sigma must be >= 0")
        return torch.where(torch.isinf(s), torch.ones_like(s), s / (1 + s))

    def sigma_at(self, t) -> torch.Tensor:
        u = self._check_t(t) / (self.T - 1)
        return u / (1 - u)  # inf at u = 1

    def alpha_bar_at(self, t) -> torch.Tensor:
        u = self._check_t(t) / (self.T - 1)
        return (1 - u) ** 2 / ((1 - u) ** 2 + u**2)  # finite at u = 1 (0: pure noise)

    def t_at(self, sigma) -> torch.Tensor:
        return self.time(sigma) * (self.T - 1)

    def uniform_levels(self, steps):
        u = 1 - torch.arange(steps, dtype=torch.float64) / steps
        return u / (1 - u), u * (self.T - 1)


class EDMSchedule(ContinuousSchedule):
    """EDM (Karras et al. 2022): sigma in [sigma_min, sigma_max]. The paper's network input is
    c_noise = ln(sigma) / 4; here the same log-sigma is mapped affinely so [sigma_min, sigma_max]
    covers [0, T - 1] (an affine map of the input is absorbed by a learned embedding; levels outside
    the range clamp to its ends). Uniform levels are uniform in log sigma."""

    @property
    def _log_range(self) -> tuple[float, float]:
        return math.log(self.sigma_min), math.log(self.sigma_max)

    def sigma_at(self, t) -> torch.Tensor:
        lo, hi = self._log_range
        return (lo + self._check_t(t) / (self.T - 1) * (hi - lo)).exp()

    def t_at(self, sigma) -> torch.Tensor:
        lo, hi = self._log_range
        s = _f64(sigma)
        if bool((s < 0).any()):
            raise ValueError("sigma must be >= 0")
        return ((s.log() - lo) / (hi - lo) * (self.T - 1)).clamp(0, self.T - 1)

    def uniform_levels(self, steps):
        ts = torch.linspace(self.T - 1, 0, steps, dtype=torch.float64)
        return self.sigma_at(ts), ts


def _check_steps(steps) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


# name -> constructor (T, **options); the names [diffusion] schedule accepts
SCHEDULES = {"linear": Schedule.linear, "cosine": Schedule.cosine, "scaled_linear": Schedule.scaled_linear,
             "sigmoid": Schedule.sigmoid}
BETA_RANGE_SCHEDULES = ("linear", "scaled_linear")


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _betas_from_alpha_bar(abar, T: int, max_beta: float) -> torch.Tensor:
    """beta_t = 1 - abar((t+1)/T) / abar(t/T), capped (as in improved DDPM)."""
    return _f64([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)])
