"""The built-in task is deterministic and exactly verifiable; datasets load from local folders; rewards grade."""

import pytest

from grpo_lambda.data import arithmetic_dataset, load_problem_dataset, to_prompts
from grpo_lambda.rewards import accuracy_reward, format_reward, get_reward_funcs


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
    assert accuracy_reward(completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert format_reward(completions) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_unknown_reward_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown reward"):
        get_reward_funcs(["accuracy", "vibes"])


def test_prompts_are_chats_with_the_answer_kept():
    prompts = to_prompts(arithmetic_dataset(3, 0), "Be brief.")
    row = prompts[0]
    assert row["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert row["prompt"][1]["role"] == "user" and row["answer"].lstrip("-").isdigit()
    assert to_prompts(arithmetic_dataset(1, 0), None)[0]["prompt"][0]["role"] == "user"


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
    with pytest.raises(SystemExit, match="no problem column"):
        load_problem_dataset(str(tmp_path / "d"), "train")


def test_any_of_several_gold_answers_counts():
    completions = ["\\boxed{3}", "\\boxed{4}", "\\boxed{5}"]
    assert accuracy_reward(completions, answer=["3\n4", "3\n4", "3\n4"]) == [1.0, 1.0, 0.0]
