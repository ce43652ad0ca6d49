"""Build Stable Diffusion pipelines with random weights from diffusers' own classes.

Tests use the tiny shapes (a pipeline in a few MB, an image in milliseconds); the benchmarks use
SD 1.5's real configs. Nothing is downloaded: the tokenizer's byte-level vocabulary is made here.
"""

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3ControlNetModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)


def byte_level_tokenizer(vocab_size: int = 1000) -> CLIPTokenizer:
    """A CLIP tokenizer over GPT-2's byte alphabet, padded with filler tokens to `vocab_size`."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    tokens += [f"<filler{i}>" for i in range(vocab_size - len(tokens))]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def text_encoder_config(hidden: int, layers: int, heads: int, projection: int, vocab: int,
                        **extra) -> CLIPTextConfig:
    return CLIPTextConfig(**{
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": hidden * 4, "num_attention_heads": heads, "num_hidden_layers": layers,
        "projection_dim": projection, "max_position_embeddings": 77, "hidden_act": "quick_gelu", **extra})


CLIP_L = (768, 12, 12, 768, 49408)  # CLIP ViT-L/14's text encoder (SD 1.x, SDXL, SD 3, FLUX.1): text_encoder_config
FLOW_LATENTS = {"shift_factor": 0.0609, "scaling_factor": 1.5305}  # SD 3's autoencoder shifts and scales its latents


def tiny_unet(**extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(**{
        "block_out_channels": (32, 64), "layers_per_block": 2, "sample_size": 32, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32, **extra})


def tiny_vae(latent_channels: int = 4, **extra) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, **extra,
    )


def sd15_unet() -> UNet2DConditionModel:
    """Stable Diffusion 1.5's UNet at its real size (about 0.86 B parameters)."""
    return UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def sd_vae(latent_channels: int = 4, **extra) -> AutoencoderKL:
    """Stable Diffusion's autoencoder at its real size: 4 latent channels (SD 1.x/2.x, SDXL) or 16 (SD 3, FLUX.1)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), latent_channels=latent_channels, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **extra,
    )


def save_tiny_sd(folder: Path, safety_checker: bool = False) -> Path:
    """SD-1.x-shaped: 64x64 native size (32x32 latents, VAE scale factor 2).

    With safety_checker, a tiny checker whose thresholds flag every image (so that the tests see it act).
    """
    torch.manual_seed(0)
    checker, extractor = tiny_safety_checker() if safety_checker else (None, None)
    pipe = StableDiffusionPipeline(
        unet=tiny_unet(), vae=tiny_vae(),
        text_encoder=CLIPTextModel(text_encoder_config(32, 2, 4, 32, 1000)), tokenizer=byte_level_tokenizer(),
        scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=checker, feature_extractor=extractor,
        requires_safety_checker=safety_checker,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_sd_inpainting(folder: Path) -> Path:
    """An inpainting checkpoint, SD-1.x-shaped: its UNet reads 9 channels (latents, mask, masked image)."""
    torch.manual_seed(0)
    pipe = StableDiffusionInpaintPipeline(
        unet=tiny_unet(in_channels=9), vae=tiny_vae(),
        text_encoder=CLIPTextModel(text_encoder_config(32, 2, 4, 32, 1000)), tokenizer=byte_level_tokenizer(),
        scheduler=PNDMScheduler(skip_prk_steps=True), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_safety_checker() -> tuple[StableDiffusionSafetyChecker, CLIPImageProcessor]:
    vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 4}
    text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vocab_size": 1000}
    checker = StableDiffusionSafetyChecker(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
    # A concept is flagged when cos(image, concept) exceeds its weight; cos > -1 always.
    checker.concept_embeds_weights.data.fill_(-1.0)
    extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return checker, extractor


def save_tiny_sdxl(folder: Path) -> Path:
    """SDXL-shaped: two text encoders, time-conditioned UNet; 64x64 native size."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=tiny_vae(), scheduler=EulerDiscreteScheduler(),
        text_encoder=CLIPTextModel(text_encoder_config(32, 2, 4, 32, 1000)), tokenizer=byte_level_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(32, 2, 4, 32, 1000)),
        tokenizer_2=byte_level_tokenizer(),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_sd15_sized(folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Stable Diffusion 1.5's real architecture (about 1.07 B parameters) with random weights."""
    torch.manual_seed(0)
    unet, vae, text_encoder = sd15_unet(), sd_vae(sample_size=512), CLIPTextModel(text_encoder_config(*CLIP_L))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=byte_level_tokenizer(49408),
        scheduler=PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(dtype).save_pretrained(folder, safe_serialization=True)
    return folder


CLIP_G = (1280, 32, 20, 1280, 49408)  # OpenCLIP ViT-bigG/14's text encoder (SDXL's and SD 3's second)


def sdxl_sized(device: str = "cpu") -> StableDiffusionXLPipeline:
    """SDXL base's real architecture (about 3.5 B parameters) with random weights, its models made on `device`; its
    VAE asks for float32 decodes (force_upcast), as SDXL's does."""
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
            transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        models = {"unet": unet, "vae": sd_vae(sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                  "text_encoder": CLIPTextModel(text_encoder_config(*CLIP_L)),
                  "text_encoder_2": CLIPTextModelWithProjection(text_encoder_config(*CLIP_G, hidden_act="gelu"))}
    return StableDiffusionXLPipeline(
        **models, tokenizer=byte_level_tokenizer(49408), tokenizer_2=byte_level_tokenizer(49408),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"))


def sd35_shaped(device: str = "cpu", layers: int = 6) -> StableDiffusion3Pipeline:
    """SD 3.5 Medium's widths (a 1536-wide MMDiT, QK norms, dual attention in its first blocks, CLIP-L and G, its
    16-channel VAE) with `layers` of its 24 blocks and without T5 (SD 3's DROP_T5 path): the per-block cost at 1024."""
    with torch.device(device):
        models = {
            "transformer": SD3Transformer2DModel(
                sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
                dual_attention_layers=tuple(range(layers // 2))),
            "vae": sd_vae(16, sample_size=1024, **FLOW_LATENTS, use_quant_conv=False, use_post_quant_conv=False),
            "text_encoder": CLIPTextModelWithProjection(text_encoder_config(*CLIP_L)),
            "text_encoder_2": CLIPTextModelWithProjection(text_encoder_config(*CLIP_G, hidden_act="gelu"))}
    return StableDiffusion3Pipeline(**models, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    tokenizer=byte_level_tokenizer(49408), tokenizer_2=byte_level_tokenizer(49408),
                                    text_encoder_3=None, tokenizer_3=None)


def flux_shaped(device: str = "cpu", double: int = 2, single: int = 4) -> FluxPipeline:
    """FLUX.1-schnell's widths (a 3072-wide transformer, CLIP-L, a 4096-wide T5 of 2 layers, its VAE) with `double`
    of its 19 dual-stream blocks and `single` of its 38 single-stream ones: the per-block cost at 1024."""
    with torch.device(device):
        models = {
            "transformer": FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
                axes_dims_rope=(16, 56, 56)),
            "vae": sd_vae(16, sample_size=1024, **FLOW_LATENTS, use_quant_conv=False, use_post_quant_conv=False),
            "text_encoder": CLIPTextModel(text_encoder_config(*CLIP_L)),
            "text_encoder_2": T5EncoderModel(T5Config(
                vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                feed_forward_proj="gated-gelu", is_gated_act=True))}
    return FluxPipeline(
        **models, tokenizer=byte_level_tokenizer(49408), tokenizer_2=t5_tokenizer(),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096))


def save_sized(build, folder: Path, dtype: torch.dtype, device: str = "cpu") -> Path:
    """One of the real-width pipelines above (bench/gpu.py), random weights seeded, made on device, saved in dtype."""
    torch.manual_seed(0)
    build(device).to(dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def save_controlnet_of(model_folder: Path, folder: Path) -> Path:
    """A ControlNet of the UNet in model_folder, at its size, its zero convolutions made random (a trained one's
    residuals are not zero)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(model_folder / "unet")
    controlnet = ControlNetModel.from_unet(unet)
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(block.weight, std=0.02)
    controlnet.to(unet.dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_controlnet(folder: Path) -> Path:
    """A ControlNet for the tiny SD. Its zero convolutions (a real ControlNet's start) get random weights, so that
    the control image changes the output, as a trained one does; the control image's embedding a large one, so that
    it, not the latents, decides the residuals (another control image: 27% other residuals, against 3% at the zero
    convolutions' scale, which moved the float32 image by a tenth of a level)."""
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=(16, 32))
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.1)
    torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=1.0)
    controlnet.save_pretrained(folder)
    return folder


def t5_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer over printable ASCII, one piece per character."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return T5Tokenizer(vocab=pieces + [(chr(c), -3.0) for c in range(ord("!"), ord("~") + 1)], extra_ids=0)


def tiny_t5() -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8))


def tiny_flow_vae(**extra) -> AutoencoderKL:
    """SD 3's and FLUX.1's autoencoder: 16 latent channels, shifted and scaled latents."""
    return tiny_vae(16, **FLOW_LATENTS, **extra)


# Two layers: SD 3's last block reads no ControlNet (it updates the image stream only).
SD3_TRANSFORMER = {"sample_size": 32, "patch_size": 1, "in_channels": 16, "num_layers": 2, "attention_head_dim": 8,
                   "num_attention_heads": 4, "caption_projection_dim": 32, "joint_attention_dim": 32,
                   "pooled_projection_dim": 64, "out_channels": 16}
FLUX_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
                    "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
                    "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8]}


# SD 3.5's transformers: Large and Large Turbo normalise queries and keys (RMSNorm); Medium also has dual-attention
# layers (a second, image-only attention in its first blocks).
SD35_LARGE = {"qk_norm": "rms_norm"}
SD35_MEDIUM = {"qk_norm": "rms_norm", "dual_attention_layers": (0,)}


def save_tiny_sd3(folder: Path, **transformer) -> Path:
    """SD-3-shaped: an MMDiT transformer, two CLIP encoders and a T5, flow matching; 64x64 native size. transformer:
    SD 3.5's options (SD35_LARGE, SD35_MEDIUM)."""
    torch.manual_seed(0)
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**SD3_TRANSFORMER, **transformer), vae=tiny_flow_vae(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(text_encoder_config(32, 2, 4, 32, 1000)),
        tokenizer=byte_level_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(32, 2, 4, 32, 1000)),
        tokenizer_2=byte_level_tokenizer(), text_encoder_3=tiny_t5(), tokenizer_3=t5_tokenizer(),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_flux(folder: Path, guidance: bool = False) -> Path:
    """FLUX.1-shaped: a dual-stream transformer, CLIP and T5 encoders, flow matching with resolution-dependent
    shift; schnell-like (no guidance embedding) unless guidance. Native size: FLUX's 128 latents, 256x256 here."""
    torch.manual_seed(0)
    pipe = FluxPipeline(
        transformer=FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=guidance),
        vae=tiny_flow_vae(use_quant_conv=False, use_post_quant_conv=False),
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
        text_encoder=CLIPTextModel(text_encoder_config(32, 2, 4, 32, 1000)), tokenizer=byte_level_tokenizer(),
        text_encoder_2=tiny_t5(), tokenizer_2=t5_tokenizer(),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_preview_decoder(folder: Path, latent_channels: int = 4, flow: bool = False) -> Path:
    """A TAESD-shaped AutoencoderTiny (diffusers' class for madebyollin's TAESD family): one upsampling, like the tiny
    models' VAEs; with flow, SD 3's and FLUX.1's latent factors, as TAESD3 and TAEF1 declare them."""
    torch.manual_seed(0)
    decoder = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                              num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=latent_channels,
                              **(FLOW_LATENTS if flow else {}))
    decoder.save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_sd3_controlnet(folder: Path) -> Path:
    torch.manual_seed(0)
    return _randomised(SD3ControlNetModel(**{**SD3_TRANSFORMER, "num_layers": 1}), folder)


def save_tiny_flux_controlnet(folder: Path) -> Path:
    torch.manual_seed(0)
    return _randomised(FluxControlNetModel(**FLUX_TRANSFORMER), folder)


def _randomised(controlnet: torch.nn.Module, folder: Path) -> Path:
    """A transformer ControlNet starts with zero projections (so that it changes nothing until trained): random
    ones here, so that the control image changes the output, as a trained one does."""
    for parameter in controlnet.parameters():
        if parameter.ndim >= 2 and not parameter.any():
            torch.nn.init.normal_(parameter, std=0.1)
    controlnet.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    # `make demo`: python3 -m testkit.model_factory FOLDER saves the tiny random-weight SD model there.
    import sys

    folder = save_tiny_sd(Path(sys.argv[1]))
    print(f"model_factory: a tiny model with random weights (its images are noise) in {folder}")


# What a tiny LoRA adapts: attention projections everywhere, and a convolution of each UNet (LoCon, as kohya's
# trainers make).
LORA_TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0", "conv1"], "transformer": ["to_q", "to_k", "to_v"],
                "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"]}


def save_tiny_lora(model_folder: Path, into: Path, seed: int = 0, kohya: bool = False, rank: int = 4,
                   alpha: float = 8.0, std: float = 0.2) -> Path:
    """A LoRA with random factors for the tiny model in model_folder, made with PEFT and saved by diffusers'
    save_lora_weights (PEFT/diffusers format), or in kohya's format (AUTOMATIC1111's). Large enough a change to
    show in the image."""
    from diffusers import AutoPipelineForText2Image
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    pipe = AutoPipelineForText2Image.from_pretrained(model_folder)
    layers = {}
    for name in ("unet", "transformer", "text_encoder"):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                     target_modules=LORA_TARGETS[name]))
        for key, parameter in model.named_parameters():
            if "lora_" in key:
                torch.nn.init.normal_(parameter, std=std)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(model)
    into.parent.mkdir(parents=True, exist_ok=True)
    if not kohya:
        type(pipe).save_lora_weights(into.parent, weight_name=into.name, **layers)
        return into
    # kohya's names: the module's path with "_" for ".", under lora_unet_ and lora_te_ (its text encoder's path as
    # transformers 4 named it, text_model.encoder...), an alpha beside each pair.
    kohya_state = {}
    for key, layer in layers.items():
        prefix = {"unet_lora_layers": "lora_unet_", "text_encoder_lora_layers": "lora_te_text_model_"}[key]
        for name, tensor in layer.items():
            module, _, kind = name.rpartition(".lora_")
            module = prefix + module.replace(".", "_")
            kohya_state[f"{module}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
            kohya_state[f"{module}.alpha"] = torch.tensor(alpha)
    save_file({name: tensor.contiguous() for name, tensor in kohya_state.items()}, into)
    return into
