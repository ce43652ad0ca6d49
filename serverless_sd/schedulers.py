"""Samplers by name: this project's short names and AUTOMATIC1111's display names, case-insensitively.

SD 3 and FLUX.1 are flow-matching models: they take the flow-matching schedulers (FLOW) and no other, and there
"euler" means flow_euler (as Forge's "Euler" does for FLUX); SD 1.x/2.x and SDXL take every other one.

Each request gets a fresh scheduler built from the model's own scheduler config, so one request's choice (and
a scheduler's internal state) never reaches the next.
"""

# Class names in diffusers, so that validating a name does not import diffusers.
SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++_2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    # Few-step: for LCM, TCD, Lightning, Hyper-SD and turbo models, at 1-8 steps with guidance_scale 0 or 1.
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_euler_karras": ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}),
}
FLOW = ("flow_euler", "flow_euler_karras")
A1111_NAMES = {
    "euler": "euler", "euler a": "euler_a", "ddim": "ddim", "dpm++ 2m": "dpm++_2m",
    "dpm++ 2m karras": "dpm++_2m_karras", "unipc": "unipc", "lms": "lms", "plms": "pndm", "lcm": "lcm",
}


def canonical(name: str, flow_matching: bool = False) -> str | None:
    """The short name for any accepted spelling, or None; on a flow-matching model, euler is flow_euler."""
    key = " ".join(name.lower().split())
    key = key if key in SCHEDULERS else A1111_NAMES.get(key)
    return "flow_euler" if flow_matching and key == "euler" else key


def applies(name: str, flow_matching: bool) -> bool:
    """Whether the scheduler (a canonical name) runs on a model that is (or is not) flow-matching."""
    return (name in FLOW) == flow_matching


# AUTOMATIC1111's display spellings, as its users type them (matching is case-insensitive all the same).
A1111_SPELLINGS = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "UniPC", "LMS", "PLMS", "LCM"]
assert {spelling.lower() for spelling in A1111_SPELLINGS} == set(A1111_NAMES)


def names(flow_matching: bool | None = None) -> list[str]:
    """Every spelling the API documents (for a flow-matching model or not; None: both): this project's short names
    and AUTOMATIC1111's display names."""
    spellings = [*SCHEDULERS, *(name for name in A1111_SPELLINGS if name not in SCHEDULERS)]
    if flow_matching is None:
        return spellings
    return [name for name in spellings if applies(canonical(name, flow_matching), flow_matching)]


def known_names(flow_matching: bool | None = None) -> str:
    return ", ".join(names(flow_matching))


def build(name: str | None, model_scheduler, flow_matching: bool = False):
    """A new scheduler, the named one or the model's own, configured from the model's scheduler config."""
    import diffusers

    class_name, options = SCHEDULERS[canonical(name, flow_matching)] if name else (type(model_scheduler).__name__, {})
    return getattr(diffusers, class_name).from_config(model_scheduler.config, **options)
