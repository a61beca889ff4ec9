import pytest

from grpo_lambda.configs import GRPOLambdaConfig
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.methods import Method, RunFolder, SFTFolder

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


def test_bad_tags():
    bad_tags = ("eps_trace", "eps_trace-sideways-0.9", "grpo+clamp", "grpo+beta=0.1", "ppo")
    for bad in (*bad_tags, "grpo-lambda-0.99-both-trace"):  # the last: a spelling from before the config's fields
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


@pytest.mark.parametrize("model", ["org/My_Model-1.5B", "My_Model-1.5B", "/ckpt/my_model-v2/", "embedded:tiny-qwen2"])
@pytest.mark.parametrize("dataset", ["my_data", "my-data", "math-rl-16k", "org/gsm_8k", "/data/my_set_v2/"])
@pytest.mark.parametrize(("tag", "method"), TAGS)
def test_run_folder_round_trips_underscores_in_model_and_dataset(model, dataset, tag, method):
    """Model names keep their `_` and `-` (a path segment of their own); a dataset's `_` is written `-`, so the first
    `_` after it starts the method's tag, which holds `_` itself."""
    folder = RunFolder(model, dataset, method)
    assert folder.name == f"{folder.model}/grpo/{folder.dataset}_{tag}"
    assert "_" not in folder.dataset and "/" not in folder.model + folder.dataset
    for path in (folder.name, f"data/sweeps/s/{folder.name}/checkpoint-8", f"/x/{folder.name}/eval"):
        assert RunFolder.find(path) == folder, path
    sft = SFTFolder(model, dataset)
    assert sft.name == f"{folder.model}/sft/{folder.dataset}"
    assert SFTFolder.find(f"data/{sft.name}/checkpoint-200") == sft


def test_run_folder_spellings():
    folder = RunFolder("org/My_Model-1.5B", "/data/my_data/", Method("eps_trace", "both", 0.99))
    assert folder.name == "My_Model-1.5B/grpo/my-data_eps_trace-both-0.99"
    assert (folder.model, folder.dataset) == ("My_Model-1.5B", "my-data")
    assert SFTFolder("embedded:SmolLM2-135M-Instruct", "arithmetic").name == "SmolLM2-135M-Instruct/sft/arithmetic"
    assert SFTFolder.find("data/eval/SmolLM2-135M-Instruct") is None


def test_a_variant_names_its_folder_only_when_it_is_no_method_tag():
    """A sweep variant's own name replaces the tag; one that reads as a method must be the method trained (tables and
    plots take the method from the folder's name)."""
    grpo = Method("grpo")
    free = RunFolder("m", "my_data", grpo, variant="lr_1e-5")
    assert free.name == "m/grpo/my-data_lr_1e-5" and RunFolder.find(free.name) is None
    assert RunFolder("m", "d", grpo, variant="grpo") == RunFolder("m", "d", grpo)
    with pytest.raises(GRPOLambdaError, match="trains 'grpo'.*name it 'grpo'"):
        RunFolder("m", "d", grpo, variant="eps_trace-both-0.99")
    with pytest.raises(GRPOLambdaError, match="no '/'"):
        RunFolder("m", "d", grpo, variant="a/b")
