"""The built-in task is deterministic and exactly verifiable; datasets load from local folders; rewards grade."""

import json
import logging

import pytest

from grpo_lambda.data import arithmetic_dataset, load_problem_dataset, solution_dataset, to_prompts
from grpo_lambda.errors import GRPOLambdaError
from grpo_lambda.rewards import AccuracyReward, FormatReward, get_reward_funcs
from grpo_lambda.templates import QWEN_MATH_SYSTEM


@pytest.mark.parametrize("level", ["one_step", "two_step"])
def test_arithmetic_task_is_deterministic_per_seed(level):
    first = arithmetic_dataset(50, seed=3, level=level)
    assert first.to_dict() == arithmetic_dataset(50, seed=3, level=level).to_dict()
    assert first.to_dict() != arithmetic_dataset(50, seed=4, level=level).to_dict()
    train = set(arithmetic_dataset(300, 0, "train", level)["problem"])
    test = set(arithmetic_dataset(300, 0, "test", level)["problem"])
    assert len(train & test) < 30  # different streams; short problems can still coincide


def test_arithmetic_answers_are_exact():
    # Re-derive each answer from the numbers in the text, independently of the generator.
    for row in arithmetic_dataset(200, seed=1).to_list():
        words = row["problem"].replace(".", " ").replace("?", " ").split()
        a, b = [int(w) for w in words if w.isdigit()]
        if "more" in row["problem"]:
            expected = a + b
        elif "gives away" in row["problem"]:
            expected = a - b
        else:
            expected = a * b
        assert int(row["answer"]) == expected, row


def test_accuracy_reward_grades_boxed_and_plain_answers():
    completions = [
        [{"role": "assistant", "content": "3 + 4 = 7, so the answer is \\boxed{7}."}],
        [{"role": "assistant", "content": "The total is 8."}],
        [{"role": "assistant", "content": "\\boxed{\\frac{1}{2}}"}],
        [{"role": "assistant", "content": "I do not know."}],
        "plain string completion: 12",
    ]
    answers = ["7", "7", "0.5", "7", "12"]
    assert AccuracyReward("no")(completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert FormatReward("no")(completions) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_unknown_reward_is_a_clear_error():
    with pytest.raises(GRPOLambdaError, match="unknown reward"):
        get_reward_funcs(["accuracy", "vibes"])


def test_prompts_follow_the_template_and_keep_the_answer():
    row = to_prompts(arithmetic_dataset(3, 0), "qwen_math")[0]
    assert row["prompt"][0] == {"role": "system", "content": QWEN_MATH_SYSTEM}
    assert row["prompt"][1] == {"role": "user", "content": row["problem"]} and row["answer"].lstrip("-").isdigit()
    assert to_prompts(arithmetic_dataset(1, 0), "no")[0]["prompt"] == [{"role": "user", "content": row["problem"]}]
    r1 = to_prompts(arithmetic_dataset(1, 0), "r1")[0]["prompt"]
    assert isinstance(r1, str) and r1.endswith("Assistant: <think>") and row["problem"] in r1


@pytest.mark.parametrize(
    "folder,split,rows",
    [("train/gsm_8k", "train", 8792), ("evaluation_suite/amc", "test", 83), ("evaluation_suite/minerva", "test", 272)],
)
def test_local_save_to_disk_folders_load(shared_data, folder, split, rows):
    dataset = load_problem_dataset(str(shared_data / folder), split)
    assert len(dataset) == rows and set(dataset.column_names) == {"problem", "answer"}
    assert all(isinstance(a, str) and a for a in dataset["answer"][:50])
    if folder.endswith("amc"):
        assert "." not in dataset[0]["answer"]  # 142.0 → "142"


def test_missing_split_or_column_is_a_clear_error(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(GRPOLambdaError, match="no problem column"):
        load_problem_dataset(str(tmp_path / "d"), "train")


def test_any_of_several_gold_answers_counts():
    completions = ["\\boxed{3}", "\\boxed{4}", "\\boxed{5}"]
    assert AccuracyReward("qwen_math")(completions, answer=["3\n4", "3\n4", "3\n4"]) == [1.0, 1.0, 0.0]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gsm8k_adapter_on_the_hub_layout(tmp_path):
    rows = [
        {
            "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
            "answer": "48/2 = 24\n48+24 = 72\n#### 72",
        },
        {"question": "A big sum?", "answer": "1000+234 = 1234\n#### 1,234"},
    ]
    dataset = load_problem_dataset("gsm8k", path=str(write_jsonl(tmp_path / "gsm8k.jsonl", rows)))
    assert dataset.to_list() == [
        {"problem": rows[0]["question"], "answer": "72"},
        {"problem": rows[1]["question"], "answer": "1234"},
    ]


def test_math12k_adapter_on_parquet(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"problem": "Compute $\\frac{1}{2}+\\frac{1}{2}$.", "answer": "1"}]).to_parquet(
        str(tmp_path / "m.parquet")
    )
    assert load_problem_dataset("math12k", path=str(tmp_path / "m.parquet")).to_list() == [
        {"problem": "Compute $\\frac{1}{2}+\\frac{1}{2}$.", "answer": "1"}
    ]


def test_math_rl_16k_adapter_reads_the_solution_column(tmp_path):
    rows = [{"problem": "Find $x$ if $2x=6$.", "solution": "3"}, {"problem": "No answer here.", "solution": ""}]
    dataset = load_problem_dataset("math-rl-16k", path=str(write_jsonl(tmp_path / "r.jsonl", rows)))
    assert dataset.to_list() == [{"problem": "Find $x$ if $2x=6$.", "answer": "3"}]


def test_orz_adapter_on_two_turn_records_and_skips_are_counted(tmp_path, caplog):
    records = [
        [
            {"from": "human", "value": "What is $1+1$?"},
            {"from": "assistant", "ground_truth": {"value": "2", "pass_at_n": 0.5}},
        ],
        [{"from": "human", "value": "Prove it."}, {"from": "assistant", "ground_truth": None}],
        [{"from": "human", "value": "Half of 9?"}, {"from": "assistant", "ground_truth": {"value": "\\frac{9}{2}"}}],
    ]
    path = tmp_path / "orz_math_57k_collected.json"
    path.write_text(json.dumps(records))
    with caplog.at_level(logging.WARNING):
        dataset = load_problem_dataset("orz-57k", path=str(path))
    assert dataset.to_list() == [
        {"problem": "What is $1+1$?", "answer": "2"},
        {"problem": "Half of 9?", "answer": "\\frac{9}{2}"},
    ]
    assert "skipped 1 of 3 rows" in caplog.text


def test_named_source_accepts_a_reduced_local_copy(shared_data):
    dataset = load_problem_dataset("gsm8k", path=str(shared_data / "train" / "gsm_8k"))
    assert len(dataset) == 8792 and all(a.lstrip("-").replace(".", "").isdigit() for a in dataset["answer"][:100])


def test_sft_solutions_from_the_gsm8k_hub_layout(tmp_path):
    rows = [{"question": "Half of 48, plus 48?", "answer": "48/2 = <<48/2=24>>24\n24+48 = <<24+48=72>>72\n#### 72"}]
    qwen = solution_dataset("gsm8k", "qwen_math", path=str(write_jsonl(tmp_path / "g.jsonl", rows)))[0]
    assert qwen["prompt"][-1] == {"role": "user", "content": "Half of 48, plus 48?"}
    assert qwen["completion"] == [
        {"role": "assistant", "content": "48/2 = 24\n24+48 = 72\nThe final answer is \\boxed{72}."}
    ]
    r1 = solution_dataset("gsm8k", "r1", path=str(tmp_path / "g.jsonl"))[0]
    assert r1["prompt"].endswith("Assistant: <think>") and r1["completion"].endswith("</think> <answer> 72 </answer>")


def test_sft_solutions_from_math500_with_solutions(shared_data):
    dataset = solution_dataset("math500", "r1", path=str(shared_data / "math500_solutions"))
    assert len(dataset) == 500
    first = dataset[0]
    assert "<|im_start|>" not in first["prompt"] and "Convert the point" in first["prompt"]
    assert first["completion"].rstrip().endswith("</answer>")


def test_reduced_answers_give_no_sft_data(shared_data):
    with pytest.raises(GRPOLambdaError, match="no worked solutions"):
        solution_dataset("gsm8k", "qwen_math", path=str(shared_data / "train" / "gsm_8k"))
