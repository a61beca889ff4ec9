import pytest

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.methods import Method, RunFolder

TAGS = [
    ("grpo", Method("grpo")),
    ("eps_trace-both-0.99", Method("eps_trace", "both", 0.99)),
    ("eps_weight-recent-0.98", Method("eps_weight", "recent", 0.98)),
    ("eps_trace-recent-0", Method("eps_trace", "recent", 0.0)),
    ("grpo+adv_clamp_min=-0.1", Method("grpo", adv_clamp_min=-0.1)),
    ("eps_trace-both-0.99+adv_clamp_min=none", Method("eps_trace", "both", 0.99, adv_clamp_min=None)),
    ("grpo+advantage_bias_correction=eos_bound", Method("grpo", advantage_bias_correction="eos_bound")),
]


@pytest.mark.parametrize(("tag", "method"), TAGS)
def test_tag_round_trip(tag, method):
    assert method.tag == tag
    assert Method.from_tag(tag) == method


def test_paper_clamp_is_the_default_and_config_round_trips(tmp_path):
    assert Method("grpo").adv_clamp_min is None
    assert Method("eps_weight", "both", 0.98).adv_clamp_min == -0.1
    for _, method in TAGS:
        config = GRPOLambdaConfig(
            output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **method.config()
        )
        assert Method.from_config(config) == method


def test_legacy_tag_and_bad_tags():
    assert Method.from_tag("grpo-lambda-0.99-both-trace") == Method("eps_trace", "both", 0.99)
    assert Method.from_tag("grpo-lambda-0.98-recent-weight") == Method("eps_weight", "recent", 0.98)
    for bad in ("eps_trace", "eps_trace-sideways-0.9", "grpo+clamp", "grpo+beta=0.1", "ppo"):
        with pytest.raises(ValueError):
            Method.from_tag(bad)
    with pytest.raises(ValueError, match="trace_style"):
        Method("eps_trace")


def test_run_folder_is_found_inside_longer_paths():
    name = "DeepSeek-R1-Distill-Qwen-1.5B/grpo/math-rl-16k_eps_trace-both-0.99"
    for path in (name, f"data/sweeps/paper-1.5b/{name}", f"/x/{name}/eval", f"{name}/checkpoint-500"):
        found = RunFolder.find(path)
        assert found is not None and found.name == name, path
        assert found.dataset == "math-rl-16k" and found.method == Method("eps_trace", "both", 0.99)
    assert RunFolder.find("data/eval/SmolLM2-135M-Instruct") is None
    assert RunFolder.find("m/grpo/gsm8k_notamethod") is None
