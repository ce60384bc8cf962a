"""SSBA, sample-specific invisible backdoor (Li et al., ICCV 2021).

A StegaStamp-style encoder hides a fixed bit string in every image; the change it makes depends
on the image, so each poison carries its own invisible trigger.  Poisons are encoded and
relabelled to the target (dirty label, like BadNets); test images are encoded the same way.

BackdoorBench ships the encoded CIFAR-10 images behind a download link; here the encoder-decoder
is trained once on the attacker's training set and cached in the zoo as an asset every SSBA
victim shares (``asset_config``).  As in the ISSBA code, the encoder outputs a residual added to
the image, here bounded: ``x' = clip(x + max_residual * tanh(r))`` (``max_residual`` 0.1 of the
pixel range, an invisibility bound no pixel can exceed).  Its training follows BackdoorBench's
PyTorch StegaStamp (``resource/ssba``): random 100-bit secrets, Adam lr 1e-4, batch 64, loss
``BCE(decoder(x'), secret) + w * MSE(x', x)`` where ``w`` stays 0 until the bits decode at 90%
accuracy and then ramps linearly to ``image_weight`` = 10 over ``ramp_steps``; no LPIPS, critic or
noise layer (StegaStamp's, which BackdoorBench's port also drops).  ``steps`` = 15,000 is about
BackdoorBench's 20 epochs; ``channels`` = 32 its width.  The hidden string is one fixed, seeded
100-bit secret for every image (BackdoorBench encodes one string for all).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ImageSet, to_float
from ..errors import PurifyError
from ..seeds import seed_global, stream
from .base import Attack, map_in_batches


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())


class Encoder(nn.Module):
    """A small U-Net on the image and the secret (projected to a 16 x 16 map, upsampled); returns the residual."""

    def __init__(self, bits: int, channels: int):
        super().__init__()
        c = channels
        self.secret = nn.Linear(bits, 3 * 16 * 16)
        self.down = nn.ModuleList([_conv(6, c), _conv(c, c, 2), _conv(c, 2 * c, 2), _conv(2 * c, 4 * c, 2)])
        self.up = nn.ModuleList([_conv(4 * c + 2 * c, 2 * c), _conv(2 * c + c, c), _conv(c + c + 6, c)])
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x, secret):
        s = F.interpolate(F.relu(self.secret(secret)).view(-1, 3, 16, 16), size=x.shape[-2:])
        h0 = torch.cat([x, s], 1)
        d1 = self.down[0](h0)
        d2 = self.down[1](d1)
        d3 = self.down[2](d2)
        d4 = self.down[3](d3)
        u3 = self.up[0](torch.cat([F.interpolate(d4, scale_factor=2), d3], 1))
        u2 = self.up[1](torch.cat([F.interpolate(u3, scale_factor=2), d2], 1))
        u1 = self.up[2](torch.cat([F.interpolate(u2, scale_factor=2), d1, h0], 1))
        return self.out(u1)


class Decoder(nn.Module):
    def __init__(self, bits: int, channels: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(_conv(3, c, 2), _conv(c, c), _conv(c, 2 * c, 2), _conv(2 * c, 2 * c), _conv(2 * c, 4 * c, 2),
                                 nn.Flatten(), nn.Linear(4 * c * 16, 512), nn.ReLU(), nn.Linear(512, bits))

    def forward(self, x):
        return self.net(x)


class SSBA(Attack):
    name = "ssba"
    published = frozenset({"SSBA", "ISSBA"})
    budgets = {
        "smoke": ({"channels": 4, "steps": 20}, "seconds on the smoke victims, for CI"),
        "cpu": ({"channels": 16, "steps": 2000}, "16 channels for 2,000 steps, against BackdoorBench's 32 for about 15,000"),
    }

    def __init__(self, *, target: int = 0, bits: int = 100, channels: int = 32, max_residual: float = 0.1, steps: int = 15000,
                 ramp_steps: int = 3000, image_weight: float = 10.0, lr: float = 1e-4, batch_size: int = 64, seed: int = 0,
                 pool: str = "all"):
        super().__init__(target=target, pool=pool)
        if bits < 1 or channels < 1 or steps < 1 or not 0 < max_residual <= 1:
            raise PurifyError(f"ssba needs bits >= 1, channels >= 1, steps >= 1 and max_residual in (0, 1]; got {bits}, {channels}, {steps}, {max_residual}")
        self.bits, self.channels, self.max_residual, self.steps, self.ramp_steps = bits, channels, max_residual, steps, ramp_steps
        self.image_weight, self.lr, self.batch_size, self.seed = image_weight, lr, batch_size, seed
        self.secret = torch.randint(0, 2, (bits,), generator=stream("ssba-secret", seed)).float()
        with torch.random.fork_rng(devices=[]):
            seed_global("ssba-init", seed)
            self.encoder, self.decoder = Encoder(bits, channels), Decoder(bits, channels)
        self.nets = nn.ModuleDict({"encoder": self.encoder, "decoder": self.decoder})  # the asset: "encoder." and "decoder." weights
        self.ready, self.report = False, {}

    def asset_config(self) -> dict:
        return {"bits": self.bits, "channels": self.channels, "max_residual": self.max_residual, "steps": self.steps,
                "ramp_steps": self.ramp_steps, "image_weight": self.image_weight, "lr": self.lr, "batch_size": self.batch_size,
                "seed": self.seed}

    def encode(self, x: torch.Tensor, secret: torch.Tensor) -> torch.Tensor:
        return (x + self.max_residual * torch.tanh(self.encoder(x, secret))).clamp(0, 1)

    def build_asset(self, train: ImageSet, device, progress: bool = False) -> dict:
        """Train the encoder and decoder on ``train``'s images with random secrets; return their weights."""
        from tqdm.auto import tqdm

        self.nets.to(device).train()
        optimizer = torch.optim.Adam(self.nets.parameters(), lr=self.lr)
        # the images and the draws live on the device, and the image-loss ramp is counted there: no step copies or waits
        images = train.images.to(device)
        generator = stream("ssba-training", self.seed, device=device)
        started = torch.zeros((), dtype=torch.bool, device=device)  # has the bit accuracy passed 0.9 yet?
        ramped = torch.zeros((), device=device)  # steps since it did
        for _ in tqdm(range(self.steps), disable=not progress, desc="ssba encoder", leave=False):
            index = torch.randint(0, len(images), (self.batch_size,), generator=generator, device=device)
            x = to_float(images[index])
            secret = torch.randint(0, 2, (self.batch_size, self.bits), generator=generator, device=device).float()
            encoded = self.encode(x, secret)
            bit_logits = self.decoder(encoded)
            bit_loss = F.binary_cross_entropy_with_logits(bit_logits, secret)
            started |= ((bit_logits.detach() > 0).float() == secret).float().mean() > 0.9
            weight = self.image_weight * (ramped / max(self.ramp_steps, 1)).clamp(max=1.0) * started
            ramped += started
            loss = bit_loss + weight * F.mse_loss(encoded, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.ready = True
        self.report = self.measure(train.images[-500:])
        return self.nets.state_dict()

    def load_asset(self, state: dict) -> None:
        self.nets.load_state_dict(state)
        self.ready = True

    def asset_report(self) -> dict:
        return self.report

    @torch.no_grad()
    def measure(self, images: torch.Tensor) -> dict:
        """Bit accuracy of the fixed secret decoded from encoded ``images``, and their PSNR against the originals."""
        encoded = self.apply(images)
        device = next(self.decoder.parameters()).device
        self.decoder.eval()
        bits = (self.decoder(to_float(encoded.to(device))) > 0).float().cpu()
        mse = (encoded.float() - images.float()).pow(2).mean().item()
        return {"bit_accuracy": round((bits == self.secret).float().mean().item(), 4),
                "psnr_db": round(10 * torch.log10(torch.tensor(255.0**2 / max(mse, 1e-12))).item(), 2),
                "max_pixel_change": int((encoded.int() - images.int()).abs().max())}

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if not self.ready:
            raise PurifyError("ssba has no trained encoder yet: the victim zoo trains it once and caches it (attack.build_asset)")
        device = next(self.encoder.parameters()).device
        self.encoder.eval()
        return map_in_batches(lambda x: self.encode(x, self.secret.to(device).expand(len(x), -1)), images, device)
