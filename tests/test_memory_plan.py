"""The memory plan as a pure function: Z-Image-Turbo at its released size (bytes computed from the FULL
configuration, nothing downloaded), at the budgets of issue 10, on each kind of device."""

import pytest

from ollama_img.errors import UserError
from ollama_img.memory.budget import BUDGET_ENV, Budget, parse_bytes, resolve, user_budget
from ollama_img.memory.plan import (
    DEVICES,
    ENCODERS_ON_DEMAND,
    ONE_STAGE,
    RESIDENT,
    Evaluation,
    MemoryPlanError,
    Planner,
    Request,
    plan_memory,
)
from ollama_img.memory.profile import DECODER, DENOISER, ENCODER
from ollama_img.quantization import DEQUANTIZE_PER_CALL, QUANTIZED_MATMUL
from tests.fixtures.full_size import full_profile

GB = 10**9
CUDA = DEVICES["cuda"]
PROMPT = "a red fox in the snow, golden light, detailed photo"


def plan(quant, budget_gb, size=1024, device=CUDA, **request):
    request = Request(size, size, prompt_bytes=len(PROMPT), **request)
    return plan_memory(
        full_profile(quant), device=device, budget=Budget(int(budget_gb * GB), "test"), request=request
    )


# -- the profile: stored bytes as bench/RESULTS.md measured them ---------------------------------------


@pytest.mark.parametrize(("quant", "total"), [(None, 20.52), ("fp8", 11.17), ("int4", 6.65)])
def test_full_size_weights_match_the_store(quant, total):
    profile = full_profile(quant)
    assert profile.weights / GB == pytest.approx(total, abs=0.01)
    roles = {c.name: c.role for c in profile.components}
    assert roles == {"text_encoder": ENCODER, "transformer": DENOISER, "vae": DECODER}
    assert {c.quant_type for c in profile.components if c.name != "vae"} == {quant}


def test_profile_constants_agree_with_the_pipeline():
    from ollama_img.models.chat_tokenizer import MAX_TOKENS
    from ollama_img.models.zimage.pipeline import TURBO

    profile = full_profile()
    assert profile.max_prompt_tokens == MAX_TOKENS
    assert (profile.default_width, profile.default_height) == (TURBO.width, TURBO.height)
    assert profile.sequence(1024, 1024, 40) == 4096 + 64  # image tokens + caption padded to 32


def test_estimates_are_at_least_what_was_measured():
    """The anchors of bench/RESULTS.md (H100, 1024x1024, bf16): a step evaluated every 6 blocks peaked
    4.3 GB above the weights, as one graph 14.6 GB; the VAE 2 GB block by block, 12 GB as one graph."""
    from ollama_img.memory.plan import stack_bytes

    profile = full_profile()
    tokens = profile.sequence(1024, 1024, 40)
    six = stack_bytes(
        profile.denoiser, tokens, 1, Evaluation(6, pipelined=False), itemsize=2, fused=True, dequant=0
    )
    whole = stack_bytes(profile.denoiser, tokens, 1, Evaluation(None), itemsize=2, fused=True, dequant=0)
    assert six >= 4.3 * GB and whole >= 14.6 * GB
    assert profile.decoder_bytes(1024, 1024, 2, "blocks", False) >= 2.0 * GB
    assert profile.decoder_bytes(1024, 1024, 2, "whole", False) >= 12.0 * GB


# -- the targets: which levers each budget takes ----------------------------------------------


def test_bf16_unconstrained_keeps_everything_and_stays_under_24_gb():
    p = plan(None, 141)
    assert p.residency == RESIDENT and p.on_demand() == ()
    assert p.denoiser == Evaluation(1)  # pipelined: the device never waits for the host
    assert max(p.phases.values()) <= 24 * GB  # MLX's peak; the target (diffusers: 23.3 GB)
    assert p.cache_limit == p.mlx_peak - p.held_after
    # what nvidia-smi shows: MLX's peak, the driver pool's reserve and the context (measured 26.68 GB)
    assert p.peak == int(p.mlx_peak * (1 + CUDA.pool_slack)) + CUDA.overhead
    assert 26 * GB < p.peak < 27 * GB


def test_bf16_in_24_gb_releases_the_text_encoder_after_encoding():
    """Resident, it measured 25.9 GB in nvidia-smi under a 24 GB budget (MLX 23.3 GB): the driver's pool
    reserve counts, so the text encoder goes after each new prompt's encoding."""
    p = plan(None, 24)
    assert p.residency == ENCODERS_ON_DEMAND and p.on_demand() == ("text_encoder",)
    assert p.peak <= 24 * GB
    assert p.decoder == "layers"  # the VAE evaluated layer by layer


def test_bf16_in_18_gb_runs_one_stage_at_a_time():
    p = plan(None, 18)
    assert p.residency == ONE_STAGE
    assert set(p.on_demand()) == {"text_encoder", "transformer"}
    assert "transformer" not in p.holds["encode"] and "text_encoder" not in p.holds["denoise"]
    assert p.peak <= 18 * GB


@pytest.mark.parametrize("budget", [12, 16])
def test_bf16_in_16_gb_or_less_is_refused_with_what_it_needs_and_what_to_try(budget):
    with pytest.raises(MemoryPlanError) as info:
        plan(None, budget)
    error = info.value
    assert isinstance(error, UserError) and error.status == 503
    assert 16 * GB < error.need < 18 * GB
    message = str(error)
    assert "1024x1024" in message and f"{budget} GB" in message and "--quantize fp8" in message
    assert "\n" not in message


def test_fp8_in_12_gb_runs_one_stage_at_a_time_and_keeps_weights_packed():
    p = plan("fp8", 12)
    assert p.residency == ONE_STAGE
    assert set(p.on_demand()) == {"text_encoder", "transformer"}
    assert p.holds["load"] == ("transformer", "vae")
    assert p.component("transformer").compute == DEQUANTIZE_PER_CALL
    # MLX's quantized matmul would compile a CUDA kernel per tile shape (45-51 s each on an H200)
    assert p.component("text_encoder").compute == DEQUANTIZE_PER_CALL
    assert p.peak <= 12 * GB
    assert "text encoder on demand" in p.summary()


def test_quantized_weights_compute_where_each_back_end_is_fast():
    """Metal runs MLX's quantized kernels; CUDA, and the CPU for int4 and fp8 (not the fp4 types), dequantize
    each layer before its matmul."""
    metal = plan("fp8", 12, device=DEVICES["metal"])
    assert {c.compute for c in metal.components if c.quant_type} == {QUANTIZED_MATMUL}
    for device, budget in (("cuda", 8), ("cpu", 16)):
        p = plan("int4", budget, device=DEVICES[device])
        assert {c.compute for c in p.components if c.quant_type} == {DEQUANTIZE_PER_CALL}


def test_fp8_in_14_gb_releases_only_the_text_encoder():
    p = plan("fp8", 14)
    assert p.residency == ENCODERS_ON_DEMAND and p.on_demand() == ("text_encoder",)


def test_fp8_with_room_keeps_everything():
    assert plan("fp8", 16).residency == RESIDENT


def test_int4_in_8_gb():
    p = plan("int4", 8)
    assert p.residency == ONE_STAGE and p.peak <= 8 * GB
    assert "text_encoder" not in p.holds["load"]  # the text encoder comes only when a prompt does
    assert plan("int4", 9).residency == ENCODERS_ON_DEMAND


def test_a_long_prompt_may_need_one_stage_at_a_time():
    """The encoder's working set grows with the prompt: at fp8 in 13.55 GB a 512-token prompt does not fit
    beside the transformer."""
    short = plan("fp8", 13.55)
    long = plan_memory(
        full_profile("fp8"), device=CUDA, budget=Budget(int(13.55 * GB), "test"), request=Request(1024, 1024)
    )
    assert short.residency == ENCODERS_ON_DEMAND
    assert long.residency == ONE_STAGE and long.peak <= 13.55 * GB


def test_too_large_a_size_suggests_one_that_fits():
    with pytest.raises(MemoryPlanError) as info:
        plan("int4", 8, size=2048)
    assert "a smaller size (" in str(info.value) and "fits)" in str(info.value)
    fitting = str(info.value).split("a smaller size (")[1].split(" fits")[0]
    width, height = map(int, fitting.split("x"))
    assert plan("int4", 8, size=width).peak <= 8 * GB and width == height < 2048


def test_classifier_free_guidance_doubles_the_step():
    one, two = plan(None, 141), plan(None, 141, batch=2)
    assert two.phases["denoise"] > one.phases["denoise"]
    assert two.phases["encode"] == one.phases["encode"]


def test_small_images_evaluate_whole_when_weights_are_plain():
    p = plan(None, 141, size=512)
    assert p.denoiser == Evaluation(None) and p.decoder == "whole"
    q = plan("fp8", 141, size=512)  # dequantized copies of every block would be alive at once
    assert q.denoiser == Evaluation(1)


def test_devices_differ_in_overhead_and_activation_size():
    cuda, metal, cpu = (plan(None, 141, device=DEVICES[d]) for d in ("cuda", "metal", "cpu"))
    assert cuda.overhead > 0 and metal.overhead == 0
    assert cpu.itemsize == 4 and cuda.itemsize == 2
    assert cpu.phases["denoise"] > cuda.phases["denoise"]  # float32, and attention scores formed


def test_planner_plans_for_the_longest_prompt_and_defaults():
    planner = Planner(full_profile("fp8"), CUDA, Budget(12 * GB, "test"))
    default = planner.plan()
    assert (default.request.width, default.request.height) == (1024, 1024)
    assert default.request.prompt_bytes is None
    asked = planner.plan(512, 768, prompts=("short", None, "a longer negative prompt"))
    assert asked.request.prompt_bytes == len("a longer negative prompt")
    assert planner.within(Budget(141 * GB, "x")).plan().residency == RESIDENT


def test_plan_json_names_what_ps_shows():
    doc = plan("fp8", 14).to_json()
    assert doc["residency"] == ENCODERS_ON_DEMAND and doc["pool_slack"] == CUDA.pool_slack
    assert doc["peak"] <= 14 * GB and doc["budget"] == {"bytes": 14 * GB, "source": "test"}
    assert {c["name"]: c["resident"] for c in doc["components"]} == {
        "text_encoder": False,
        "transformer": True,
        "vae": True,
    }
    assert any("fp8" in line for line in doc["summary"])


# -- the budget -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12GB", 12 * GB),
        ("12 gb", 12 * GB),
        ("1.5GiB", int(1.5 * 2**30)),
        ("800MB", 800 * 10**6),
        ("24g", 24 * GB),
        ("2000000000", 2 * GB),
        ("2048KiB", 2048 * 1024),
    ],
)
def test_budget_sizes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "twelve", "12 parsecs", "-3GB", "12", "0.5KB"])
def test_bad_budget_sizes_name_the_variable(text):
    with pytest.raises(UserError, match=BUDGET_ENV):
        parse_bytes(text)


def test_user_budget_is_cut_to_the_device():
    assert user_budget({}) is None
    user = user_budget({BUDGET_ENV: "12GB"})
    assert user == Budget(12 * GB, BUDGET_ENV)
    assert resolve(user, 80 * GB, "free GPU memory") == user
    cut = resolve(user, 8 * GB, "free GPU memory")
    assert cut.bytes == 8 * GB and "cut to" in cut.source
    assert resolve(None, 8 * GB, "free GPU memory") == Budget(8 * GB, "free GPU memory")


def test_mlx_limit_is_the_plans_peak_beside_other_models_within_the_budget():
    roomy = plan(None, 141)
    assert roomy.memory_limit().bytes == roomy.peak < 27 * GB
    # other models' MLX bytes count as device memory, as the peak does: MLX's limit is then theirs + its peak
    assert roomy.memory_limit(others=5 * GB).bytes == roomy.peak + int(5 * GB * (1 + CUDA.pool_slack))
    tight = plan("int4", 8)
    assert tight.memory_limit().bytes == min(tight.peak, 8 * GB)


def test_large_images_decode_layer_by_layer_small_ones_whole():
    assert plan(None, 141).decoder == "layers"
    assert plan(None, 141, size=2048).decoder == "layers"
    assert plan(None, 141, size=512).decoder == "whole"
