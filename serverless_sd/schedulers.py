"""Samplers by name: this project's short names and AUTOMATIC1111's display names, case-insensitively.

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
}
A1111_NAMES = {
    "euler": "euler", "euler a": "euler_a", "ddim": "ddim", "dpm++ 2m": "dpm++_2m",
    "dpm++ 2m karras": "dpm++_2m_karras", "unipc": "unipc", "lms": "lms", "plms": "pndm",
}


def canonical(name: str) -> str | None:
    """The short name for any accepted spelling, or None."""
    key = " ".join(name.lower().split())
    return key if key in SCHEDULERS else A1111_NAMES.get(key)


# AUTOMATIC1111's display spellings, as its users type them (matching is case-insensitive all the same).
A1111_SPELLINGS = ["Euler", "Euler a", "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "UniPC", "LMS", "PLMS"]
assert {spelling.lower() for spelling in A1111_SPELLINGS} == set(A1111_NAMES)


def names() -> list[str]:
    """Every spelling the API documents: this project's short names and AUTOMATIC1111's display names."""
    return [*SCHEDULERS, *(name for name in A1111_SPELLINGS if name not in SCHEDULERS)]


def known_names() -> str:
    return ", ".join(names())


def build(name: str | None, model_scheduler):
    """A new scheduler, the named one or the model's own, configured from the model's scheduler config."""
    import diffusers

    class_name, options = SCHEDULERS[canonical(name)] if name else (type(model_scheduler).__name__, {})
    return getattr(diffusers, class_name).from_config(model_scheduler.config, **options)
