"""make mutants: each "this input changes the image" test must fail when the code path it guards is broken.

A test that an input acts can pass for the wrong reason: bf16 rounding moves the pixels of any change at all, so a
bar on pixels passes while the input is ignored. Here each mutant breaks one path in a copy of the working tree
(drops the control image, ignores a weight, a strength, a scheduler...), and the tests that guard it run there, in
float32 and in bf16 (where the CPU computes it): every mutant must be caught, and the unbroken copy must pass.

    python3 -m testkit.mutants [--dtype float32 --dtype bfloat16] [--only NAME] [--out bench/results]

Writes mutants.json and exits 1 if a mutant survives or the unbroken tests fail.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testkit import precision
from testkit.processes import ROOT, run


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # the file it breaks, from the repository's root
    old: str  # text found exactly once there
    new: str
    tests: tuple[str, ...]  # those that must fail


MODES, PROMPTS, FAMILIES = "tests/test_modes.py", "tests/test_prompts.py", "tests/test_families.py"
COMPILED = "tests/test_compiled.py"
MUTANTS = (
    Mutant("control image ignored", "serverless_sd/pipelines.py",
           'control = inputs.control_image.convert("RGB").resize((width, height), Image.LANCZOS)',
           'control = Image.new("RGB", (width, height))',
           (f"{MODES}::test_controlnet_follows_the_control_image_at_the_scale_asked",
            f"{FAMILIES}::test_every_mode_and_seeds")),
    Mutant("controlnet_conditioning_scale ignored", "serverless_sd/pipelines.py",
           '"controlnet_conditioning_scale": inputs.controlnet_conditioning_scale',
           '"controlnet_conditioning_scale": 1.0',
           (f"{MODES}::test_controlnet_follows_the_control_image_at_the_scale_asked",)),
    Mutant("img2img image ignored", "serverless_sd/pipelines.py",
           'options.update(image=inputs.image.convert("RGB").resize((width, height), Image.LANCZOS),',
           'options.update(image=Image.new("RGB", (width, height)),',
           (f"{MODES}::test_img2img_starts_from_the_input_image_and_runs_the_part_of_the_schedule_its_strength_says",)),
    Mutant("strength ignored", "serverless_sd/pipelines.py", "strength=inputs.strength)", "strength=0.8)",
           (f"{MODES}::test_img2img_starts_from_the_input_image_and_runs_the_part_of_the_schedule_its_strength_says",
            f"{MODES}::test_img2img_under_one_step_runs_one_at_the_strength_asked",
            f"{FAMILIES}::test_every_mode_and_seeds")),
    Mutant("mask ignored", "serverless_sd/pipelines.py",
           'options["mask_image"] = inputs.mask_image.convert("L").resize((width, height), Image.BILINEAR)',
           'options["mask_image"] = Image.new("L", (width, height), 255)',
           (f"{MODES}::test_inpainting_repaints_the_white_part_and_keeps_the_rest",)),
    Mutant("scheduler ignored", "serverless_sd/pipelines.py", "schedulers.build(inputs.scheduler,",
           "schedulers.build(None,",
           (f"{MODES}::test_a_scheduler_gives_its_own_timesteps_and_does_not_leak_into_the_next_request",
            f"{FAMILIES}::test_what_a_family_does_not_take_is_refused_by_name")),
    Mutant("Karras sigmas ignored", "serverless_sd/schedulers.py",
           '"flow_euler_karras": ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True})',
           '"flow_euler_karras": ("FlowMatchEulerDiscreteScheduler", {})',
           (f"{FAMILIES}::test_what_a_family_does_not_take_is_refused_by_name",)),
    Mutant("SD 3's negative prompt ignored", "serverless_sd/pipelines.py",
           '"negative_prompt": inputs.negative_prompt or None}', '"negative_prompt": None}',
           (f"{FAMILIES}::test_what_a_family_does_not_take_is_refused_by_name",)),
    Mutant("A1111 weights ignored", "serverless_sd/prompts.py",
           'return f"({weighted.group(1)}){weighted.group(2)}"', "return weighted.group(1)",
           (f"{PROMPTS}::test_weights_change_what_the_unet_is_given_and_weight_one_is_the_plain_prompt",
            f"{PROMPTS}::test_sdxl_takes_weights_long_prompts_and_clip_skip")),
    Mutant("long prompts cut at 77 tokens", "serverless_sd/prompts.py",
           "too_long = any(len(self.tokenizer(text).input_ids) > CLIP_TOKENS for text in texts)",
           "too_long = False", (f"{PROMPTS}::test_a_long_prompt_is_used_whole",)),
    Mutant("clip_skip ignored", "serverless_sd/prompts.py",
           "with skipping_layers(self.text_encoders, (clip_skip or 1) - 1):",
           "with skipping_layers(self.text_encoders, 0):",
           (f"{PROMPTS}::test_clip_skip_2_is_clips_penultimate_layer_as_diffusers_defines_it",
            f"{PROMPTS}::test_sdxl_takes_weights_long_prompts_and_clip_skip")),
    Mutant("a LoRA's scale ignored", "serverless_sd/loras.py", "(layer, layer.scale * scale))",
           "(layer, layer.scale))", ("tests/test_loras.py::test_a_lora_changes_the_image_and_leaves_nothing_behind",)),
    Mutant("seeds past 2^32 folded", "serverless_sd/seeds.py", "    if seed < 2**32:\n", "    if True:\n",
           ("tests/test_seeds.py::test_seeds_that_differ_above_bit_32_give_different_noise",)),
    # The GPU paths' defects, each as it was before its fix (issue 27).
    Mutant("SD 3's QKV fused", "serverless_sd/families.py", ', fuse_qkv=False),', "),",
           (f"{COMPILED}::test_sd35_compiles_to_the_images_it_makes_without",)),
    Mutant("unfused projections kept", "serverless_sd/compiled.py",
           "setattr(linear, name, torch.nn.Parameter(one, requires_grad=False))", "pass",
           (f"{COMPILED}::test_fused_projections_leave_no_unfused_copy_behind",)),
    Mutant("recompile limit left at 8", "serverless_sd/pipelines.py", "allow_variants(len(model.warm_ups))", "pass",
           (f"{COMPILED}::test_more_variants_than_torchs_recompile_limit_compile_at_the_warm_up",)),
    Mutant("COMPILE=1 converts the weights to channels_last", "serverless_sd/pipelines.py",
           "        vae = self.pipe.vae\n",
           "        self.to(self.pipe.dtype, torch.channels_last)\n        vae = self.pipe.vae\n",
           (f"{COMPILED}::test_compile_leaves_the_weights_as_they_load_for_the_paths_that_run_eager",)),
    Mutant("SDXL's VAE cast to float32 and back per request", "serverless_sd/pipelines.py",
           "if dtype == torch.float16 and family.vae_upcast and pipe.vae.config.force_upcast:", "if False:",
           ("tests/test_pipelines.py::test_sdxl_in_float16_serves_its_vae_in_bf16_and_casts_nothing_per_request",)),
)


def copy_of_the_tree(into: Path) -> Path:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files), without .venv or models."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def outcome(tree: Path, tests: tuple[str, ...], dtype: str) -> tuple[bool, float, str]:
    """Whether the tests pass in that tree, in that dtype; the seconds; what pytest said: the failing test and its
    error (an assertion of the test's, not a crash of the broken code, is what catching a mutant means), or its
    summary line."""
    started = time.monotonic()
    env = {**os.environ, "DTYPE": dtype, "PYTHONDONTWRITEBYTECODE": "1"}
    result = run([sys.executable, "-m", "pytest", "-q", "-x", "--tb=line", "-p", "no:cacheprovider", *tests],
                 timeout=1800, cwd=tree, env=env)
    lines = (result.stdout + result.stderr).strip().splitlines()
    # --tb=line: "<file>:<line>: <error>" where it failed; a test file's line and an AssertionError is a catch.
    said = next((line.replace(str(tree) + "/", "") for line in lines if ".py:" in line and ": " in line
                 and line.startswith(str(tree))), lines[-1] if lines else "")
    return result.returncode == 0, round(time.monotonic() - started, 1), said[:300]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16"])
    parser.add_argument("--only", action="append", help="a mutant's name (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    dtypes = args.dtype or ["float32", *(["bfloat16"] if precision.BF16_CPU else [])]
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    report = {"cpu_bf16": precision.BF16_CPU, "dtypes": dtypes, "unbroken": {}, "mutants": []}
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = copy_of_the_tree(Path(tmp) / "tree")
        every_test = tuple(sorted({test for mutant in chosen for test in mutant.tests}))
        for dtype in dtypes:
            passed, seconds, line = outcome(tree, every_test, dtype)
            report["unbroken"][dtype] = {"passed": passed, "s": seconds, "pytest": line}
            print(f"unbroken, {dtype}: {'passed' if passed else 'FAILED'} ({seconds} s) {line}", flush=True)
            if not passed:
                problems.append(f"the unbroken tests fail in {dtype}: {line}")
        for mutant in chosen:
            target = tree / mutant.path
            original = target.read_text()
            if original.count(mutant.old) != 1:
                raise SystemExit(f"mutant {mutant.name!r}: its text is not in {mutant.path} exactly once")
            target.write_text(original.replace(mutant.old, mutant.new))
            try:
                row = {"name": mutant.name, "tests": list(mutant.tests)}
                for dtype in dtypes:
                    survived, seconds, line = outcome(tree, mutant.tests, dtype)
                    row[dtype] = {"caught": not survived, "s": seconds, "pytest": line}
                    print(f"{mutant.name}, {dtype}: {'SURVIVED' if survived else 'caught'} ({seconds} s) {line}",
                          flush=True)
                    if survived:
                        problems.append(f"{mutant.name!r} survives in {dtype}")
                report["mutants"].append(row)
            finally:
                target.write_text(original)
    report["ok"] = not problems
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mutants.json").write_text(json.dumps(report, indent=2))
    if problems:
        raise SystemExit("mutants: " + "; ".join(problems))


if __name__ == "__main__":
    main()
