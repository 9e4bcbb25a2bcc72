"""The RWKV World and G1 chat prompts, and the tail a reply leaves in a conversation."""

from __future__ import annotations

from rwkv_deploy.serve.chat_template import Message, assistant_tail, render, strip_thinking

HISTORY = [Message("system", "Be brief."), Message("user", "Hi"),
           Message("assistant", "<think>\nThey greet.\n</think> Hello!"), Message("user", "Bye")]


def test_world_turns_are_separated_by_a_blank_line_and_end_with_assistant():
    assert render("world", HISTORY[:2]) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"


def test_blank_lines_inside_a_message_cannot_end_its_turn():
    assert render("world", [Message("user", "  a\n\n\nb \n")]) == "User: a\nb\n\nAssistant:"


def test_g1_drops_earlier_thinking_world_keeps_it():
    assert "Assistant: Hello!\n\nUser: Bye" in render("g1", HISTORY)
    assert "They greet." in render("world", HISTORY)
    assert strip_thinking("no thinking here") == "no thinking here"


def test_g1_without_thinking_opens_and_closes_an_empty_think():
    assert render("g1", HISTORY[:2], enable_thinking=False).endswith("Assistant: <think>\n</think>")
    assert render("world", HISTORY[:2], enable_thinking=False).endswith("Assistant:")  # World has no think


def test_prompt_plus_tail_plus_next_turn_is_the_whole_history():
    for template in ("world", "g1"):
        first = render(template, HISTORY[:2])
        rest = render(template, HISTORY[3:])
        assert first + assistant_tail(template, HISTORY[2].content) + rest == render(template, HISTORY)
