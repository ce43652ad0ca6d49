"""Previews while a request runs: its latents decoded by a tiny autoencoder (madebyollin's TAESD family, diffusers'
AutoencoderTiny), which costs a few milliseconds on a GPU where the model's own VAE costs a hundred or more."""

import torch
from diffusers import AutoencoderTiny
from PIL import Image

from . import images, weights
from .families import Family, FamilyError
from .settings import Settings


class Previewer:
    def __init__(self, decoder: AutoencoderTiny, side: int):
        self.decoder = decoder
        self.side = side

    @classmethod
    def load(cls, settings: Settings, family: Family, latent_channels: int, device: torch.device,
             dtype: torch.dtype) -> "Previewer | None":
        """The preview decoder baked at build (PREVIEW_DECODER, else the family's), or None with PREVIEW_EVERY=0."""
        if not settings.preview_every:
            return None
        decoder_id = settings.preview_decoder or family.preview_decoder
        folder = weights.locate(decoder_id, settings.model_places, one_model=True, variable="PREVIEW_DECODER")
        decoder = AutoencoderTiny.from_pretrained(folder, dtype=dtype, local_files_only=True, use_safetensors=True)
        if decoder.config.latent_channels != latent_channels:
            raise FamilyError(f"PREVIEW_DECODER {decoder_id!r} decodes {decoder.config.latent_channels}-channel "
                              f"latents; this {family.title} model makes {latent_channels}-channel ones")
        return cls(decoder.to(device).eval(), settings.preview_side)

    def __call__(self, pipe, latents: torch.Tensor, size: tuple[int, int]) -> str:
        """The first image of the batch as it stands: a JPEG data URI, at most `side` pixels a side."""
        latents = latents[:1]
        if latents.ndim == 3:  # FLUX.1 packs 2x2 latent patches into a sequence
            latents = pipe._unpack_latents(latents, size[1], size[0], pipe.vae_scale_factor)
        config = self.decoder.config
        # What a pipeline does before its VAE's decode, with this decoder's factors (TAESD 1.x/XL: 1 and 0).
        latents = latents / config.scaling_factor + config.shift_factor
        with torch.inference_mode():
            pixels = self.decoder.decode(latents.to(self.decoder.device, self.decoder.dtype)).sample[0]
        array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array)
        image.thumbnail((self.side, self.side))
        return images.to_data_uri(image, "jpeg")
