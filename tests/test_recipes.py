"""The paper's recipe grid: generated files in sync with the grid, Table 2 in every recipe, and `make train`'s
lookup resolving every cell of the grid to its own file."""

from pathlib import Path

import pytest

from conftest import REPO_ROOT
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.jobs import launch
from grpo_lambda.jobs.launch import MethodQuery, find_recipe
from grpo_lambda.jobs.recipes import expand_grid, generate, load_grid, sft_path
from grpo_lambda.layout import model_tail
from grpo_lambda.methods import Method, RunFolder, SFTFolder
from test_configs import parse_recipe

GRID = load_grid(REPO_ROOT)
RUNS = expand_grid(GRID)

# Table 2 (and §4): model size → values every GRPO / GRPO-λ recipe of that size must hold.
TABLE_2_GRPO = {
    "1.5B": dict(
        max_steps=10000,
        max_completion_length=256,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        use_peft=False,
    ),
    "3B": dict(
        max_steps=10000,
        max_completion_length=256,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        use_peft=False,
    ),
    "7B": dict(
        max_steps=3500,
        max_completion_length=768,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        use_peft=True,
    ),
}
TABLE_2_COMMON = dict(
    bf16=True, max_prompt_length=256, num_generations=8, max_grad_norm=1.0, beta=0.04, reward_weights=[1.0, 0.0]
)
TABLE_2_SFT = dict(
    num_train_epochs=1,
    max_length=4096,
    learning_rate=2e-5,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=8,
    bf16=True,
)
MODELS = {
    "Qwen/Qwen2.5-Math-1.5B-Instruct": ("1.5B", "qwen_math"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": ("1.5B", "r1"),
    "suayptalha/DeepSeek-R1-Distill-Llama-3B": ("3B", "r1"),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": ("7B", "r1"),
}


def test_generated_recipes_match_the_grid():
    files = generate(REPO_ROOT)
    for path, text in files.items():
        assert (REPO_ROOT / path).read_text() == text, f"{path} is stale: run `make recipes`"


def test_the_grid_is_the_papers():
    """§4.1: 1.5B models: GRPO + λ {0.98, 0.99} × {both, recent} × {ε-trace, ε-weight}; 3B: GRPO + λ 0.99 ε-trace,
    both and recent; 7B: GRPO + λ 0.99 recent ε-trace; each on the four training sets."""
    assert set(GRID["datasets"]) == {"gsm8k", "math12k", "math-rl-16k", "orz-57k"}
    per_model = {m: [r for r in RUNS if r.model_id == m] for m in MODELS}
    assert [len(per_model[m]) for m in MODELS] == [4 * 9, 4 * 9, 4 * 3, 4 * 2]
    seven_b = {r.method for r in per_model["deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"]}
    assert seven_b == {Method("grpo"), Method("eps_trace", "recent", 0.99)}
    one_and_half = {r.method.tag for r in per_model["Qwen/Qwen2.5-Math-1.5B-Instruct"] if r.dataset == "gsm8k"}
    assert one_and_half == {"grpo"} | {
        f"{v}-{s}-{lam}" for v in ("eps_trace", "eps_weight") for s in ("both", "recent") for lam in ("0.98", "0.99")
    }
    for model_id, (size, template) in MODELS.items():
        assert GRID["models"][model_id]["size"] == size and GRID["models"][model_id]["template"] == template


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.path.as_posix().removeprefix("recipes/"))
def test_table_2_values_in_every_training_recipe(run):
    script_args, args, model_args = parse_recipe(REPO_ROOT / run.path)
    size, template = MODELS[run.model_id]
    expected = {**TABLE_2_COMMON, **TABLE_2_GRPO[size]}
    actual = {**vars(args), "use_peft": model_args.use_peft}
    assert {k: actual[k] for k in expected} == expected
    assert model_args.model_name_or_path == run.model_id and model_args.dtype == "bfloat16"
    assert script_args.dataset_name == run.dataset and script_args.prompt_template == template
    assert script_args.reward_funcs == ["accuracy", "format"]
    # the file's name, its output folder and its values are one method (the paper's clamp: −0.1 for GRPO-λ only)
    assert Method.from_config(args) == run.method and run.path.name == f"config_{run.dataset}_{run.method.tag}.yaml"
    assert RunFolder.find(args.output_dir) == RunFolder(model_tail(run.model_id), run.dataset, run.method)
    assert args.adv_clamp_min == (None if run.method.loss_variant == "grpo" else -0.1)  # Table 2
    if run.method.loss_variant != "grpo":
        assert args.trace_gamma == 1.0
    assert args.use_vllm and args.vllm_mode == "colocate"
    # vLLM's KV cache is sized for what a rollout uses (prompts are cut to max_prompt_length before generation)
    assert args.vllm_max_model_length == args.max_prompt_length + args.max_completion_length


@pytest.mark.parametrize("model_id", MODELS)
def test_table_2_values_in_every_sft_recipe(model_id):
    script_args, args, model_args = parse_recipe(REPO_ROOT / sft_path(model_id, GRID["sft_dataset"]))
    assert {k: getattr(args, k) for k in TABLE_2_SFT} == TABLE_2_SFT
    assert model_args.use_peft == (MODELS[model_id][0] == "7B")  # Table 2: LoRA for 7B only
    assert script_args.prompt_template == MODELS[model_id][1]


def lookup(stage="train", model=None, dataset=None, **method):
    return find_recipe(REPO_ROOT, stage, model, dataset, MethodQuery(**method))


def planned(*argv: str):
    """The launch `make train` / `make sft` would run on this CPU (its settings parsed once, nothing started)."""
    return launch.plan(launch.parser().parse_args(["--accelerate", "cpu", *argv]), REPO_ROOT)


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.path.as_posix().removeprefix("recipes/"))
def test_make_train_resolves_every_cell(run):
    fields = {k: v for k, v in vars(run.method).items() if k in ("loss_variant", "trace_style", "trace_lambda")}
    recipe, on_top, _ = lookup(model=run.model_id, dataset=run.dataset, **fields)
    assert recipe == REPO_ROOT / run.path
    assert on_top == {"model_name_or_path": run.model_id}
    assert run.make_command in recipe.read_text()  # the recipe's own launch line resolves to it
    assert "LOSS_VARIANT=" in run.make_command


def test_unset_method_fields_pick_the_papers_preferred_run():
    recipe, _, _ = lookup(model="Qwen/Qwen2.5-Math-1.5B-Instruct", dataset="math12k")
    assert recipe.name == "config_math12k_eps_trace-both-0.99.yaml"
    recipe, _, _ = lookup(model="Qwen/Qwen2.5-Math-1.5B-Instruct", dataset="math12k", loss_variant="eps_weight")
    assert recipe.name == "config_math12k_eps_weight-both-0.99.yaml"
    recipe, _, _ = lookup(model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", dataset="math12k")
    assert recipe.name == "config_math12k_eps_trace-recent-0.99.yaml"
    recipe, _, _ = lookup(model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", dataset="math12k", loss_variant="grpo")
    assert recipe.name == "config_math12k_grpo.yaml"


def test_a_cell_outside_the_grid_is_a_clear_error():
    with pytest.raises(GRPOLambdaError, match="it has: .*eps_trace-recent-0.99"):
        lookup(model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", dataset="math12k", trace_style="both")
    with pytest.raises(GRPOLambdaError, match="not to grpo"):
        lookup(
            model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", dataset="math12k", loss_variant="grpo", trace_lambda=0.99
        )
    with pytest.raises(
        GRPOLambdaError, match="has recipes for gsm8k, .*, not my_set.*DATASET=gsm8k ARGS='--dataset_name"
    ):
        lookup(model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", dataset="my_set")


def test_an_sft_output_folder_finds_its_base_models_recipes(tmp_path):
    (tmp_path / "grpo_lambda_run.json").write_text(
        '{"stage": "sft", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "prompt_template": "r1"}'
    )
    recipe, on_top, _ = lookup(model=str(tmp_path), dataset="gsm8k", loss_variant="grpo")
    assert recipe == REPO_ROOT / "recipes/DeepSeek-R1-Distill-Qwen-1.5B/grpo/config_gsm8k_grpo.yaml"
    assert on_top == {"model_name_or_path": str(tmp_path)}
    # its run folder is the base model's, as the paper's tables name it
    folder = planned(
        "--model", str(tmp_path), "--dataset", "gsm8k", "--loss_variant", "grpo", "--args", "--use_vllm false"
    ).settings.training.output_dir
    assert folder == str(REPO_ROOT / "data/DeepSeek-R1-Distill-Qwen-1.5B/grpo/gsm8k_grpo")


def test_make_train_without_arguments_runs_the_default_recipe_as_written():
    recipe, on_top, note = lookup()
    assert recipe == REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
    assert on_top == {} and note == "default recipe"
    assert lookup(loss_variant="grpo")[0].name == "config_arithmetic_grpo.yaml"
    assert lookup(stage="sft")[0] == REPO_ROOT / "recipes/default/sft/config_arithmetic.yaml"
    settings = planned().settings
    assert settings.training.output_dir == str(
        REPO_ROOT / "data/SmolLM2-135M-Instruct/grpo/arithmetic_eps_trace-both-0.99"
    )
    recipe_values = {k: v for k, v in settings.values.items() if k not in ("output_dir", "use_cpu")}
    from grpo_lambda.configs import read_recipe

    assert recipe_values == {k: v for k, v in read_recipe(recipe).items() if k != "output_dir"}


def test_unknown_models_fall_back_to_the_default_recipe_in_their_own_run_folder(tmp_path):
    """A model without recipes trains the default recipe with its model, dataset and method, in the run folder of
    that method (not the default recipe's folder, where two methods would resume each other's checkpoints)."""
    model = tmp_path / "my-model"
    model.mkdir()
    recipe, on_top, note = lookup(model=str(model), dataset="gsm8k", loss_variant="eps_weight", trace_lambda=0.5)
    assert recipe == REPO_ROOT / "recipes/default/grpo/config_arithmetic_eps_trace-both-0.99.yaml"
    assert "no recipe for my-model" in note
    assert on_top == {
        "model_name_or_path": str(model),
        "loss_variant": "eps_weight",
        "trace_lambda": 0.5,
        "dataset_name": "gsm8k",
    }
    argv = ["--model", str(model), "--dataset", "gsm8k", "--loss_variant", "eps_weight", "--trace_lambda", "0.5"]
    output_dir = planned(*argv).settings.training.output_dir
    assert output_dir == str(REPO_ROOT / "data/my-model/grpo/gsm8k_eps_weight-both-0.5")
    assert RunFolder.find(output_dir).method == Method("eps_weight", "both", 0.5)
    grpo = planned("--model", "HuggingFaceTB/SmolLM2-360M-Instruct", "--dataset", "math12k", "--loss_variant", "grpo")
    assert grpo.settings.training.output_dir == str(REPO_ROOT / "data/SmolLM2-360M-Instruct/grpo/math12k_grpo")
    sft = planned("--stage", "sft", "--model", str(model))
    assert sft.settings.training.output_dir == str(REPO_ROOT / "data/my-model/sft/arithmetic")
    with pytest.raises(GRPOLambdaError, match="apply to `make train`, not to SFT"):
        lookup(stage="sft", model=str(model), trace_lambda=0.9)


def test_the_run_folder_names_the_method_the_settings_train():
    """Issue 34: TRACE_LAMBDA=0.98 ARGS="--trace_lambda 0.5" trained λ 0.5 into a folder named …-0.98, which the
    tables then matched to the paper's λ 0.98 cell. The folder now follows the resolved settings."""
    argv = ["--model", "Qwen/Qwen2.5-Math-1.5B-Instruct", "--dataset", "gsm8k", "--loss_variant", "eps_trace"]
    argv += ["--trace_style", "both", "--trace_lambda", "0.98", "--args", "--trace_lambda 0.5 --use_vllm false"]
    settings = planned(*argv).settings
    assert settings.training.trace_lambda == 0.5
    assert settings.training.output_dir == str(
        REPO_ROOT / "data/Qwen2.5-Math-1.5B-Instruct/grpo/gsm8k_eps_trace-both-0.5"
    )
    mine = planned(*argv[:-1], "--trace_lambda 0.5 --use_vllm false --output_dir runs/mine").settings
    assert mine.training.output_dir == str(Path.cwd() / "runs/mine")  # a folder you name is kept


def test_launcher_output_dirs_with_underscores_parse_back():
    """The run folder `make train` / `make sft` write for a model and a dataset with `_` reads back as them."""
    method = ["--loss_variant", "eps_trace", "--trace_style", "both", "--trace_lambda", "0.99"]
    settings = planned("--model", "org/My_Model-1.5B", "--dataset", "my_data", *method).settings
    assert settings.script.dataset_name == "my_data"
    output_dir = settings.training.output_dir
    assert output_dir == str(REPO_ROOT / "data/My_Model-1.5B/grpo/my-data_eps_trace-both-0.99")
    assert RunFolder.find(output_dir) == RunFolder("org/My_Model-1.5B", "my_data", Method("eps_trace", "both", 0.99))
    sft = planned("--stage", "sft", "--model", "org/My_Model-1.5B", "--dataset", "my_data").settings
    assert sft.training.output_dir == str(REPO_ROOT / "data/My_Model-1.5B/sft/my-data")
    assert SFTFolder.find(sft.training.output_dir) == SFTFolder("org/My_Model-1.5B", "my_data")


def test_recipe_folders_are_named_after_the_model():
    folders = {p.name for p in (REPO_ROOT / "recipes").iterdir() if p.is_dir()} - {
        "accelerate_configs",
        "default",
        "sweeps",
        "styles",
    }
    assert folders == {model_tail(m) for m in MODELS}
    assert all(Path(run.path).parts[1] == model_tail(run.model_id) for run in RUNS)


def test_sft_needs_no_dataset_when_the_model_has_one_sft_recipe():
    recipe, _, _ = lookup(stage="sft", model="suayptalha/DeepSeek-R1-Distill-Llama-3B")
    assert recipe == REPO_ROOT / "recipes/DeepSeek-R1-Distill-Llama-3B/sft/config_gsm8k.yaml"
    with pytest.raises(
        GRPOLambdaError, match="set DATASET for DeepSeek-R1-Distill-Llama-3B: one of gsm8k, math-rl-16k"
    ):
        lookup(model="suayptalha/DeepSeek-R1-Distill-Llama-3B")
