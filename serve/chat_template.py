"""Chat messages -> a prompt in the RWKV World format, and the text an assistant turn leaves in the conversation.

World: one turn per message, `System: ...`, `User: ...`, `Assistant: ...`, joined by a blank line ("\\n\\n"),
the prompt ending with `Assistant:` for the model to continue. Blank lines inside a message are folded to one
newline (a blank line is what ends a turn). G1 (RWKV-7 "G1" reasoning models) is World with `<think>` handling:
earlier assistant turns lose everything up to `</think>`, and `enable_thinking: false` appends
` <think>\\n</think>` so the model answers without thinking. "none" serves /v1/completions only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_SEPARATOR = "\n\n"
CHAT_STOP = ("\n\nUser:",)  # a chat reply ends where the model starts the user's next turn (also at end-of-text)
_BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str


def _clean(text: str) -> str:
    return _BLANK_LINES.sub("\n", text.strip())


def strip_thinking(text: str) -> str:
    """An assistant turn as later prompts show it (G1): everything up to the last `</think>` removed."""
    head, found, tail = text.rpartition("</think>")
    return tail if found else text


def render(template: str, messages: Sequence[Message], enable_thinking: bool = True) -> str:
    """The prompt for `messages` (they end with a user or system turn): turns joined by a blank line, then
    `Assistant:` (G1 without thinking: `Assistant: <think>\\n</think>`)."""
    turns = []
    for message in messages:
        content = message.content
        if template == "g1" and message.role == "assistant":
            content = strip_thinking(content)
        turns.append(f"{ROLES[message.role]}: {_clean(content)}")
    prompt = TURN_SEPARATOR.join(turns + ["Assistant:"])
    if template == "g1" and not enable_thinking:
        prompt += " <think>\n</think>"
    return prompt


def assistant_tail(template: str, reply: str) -> str:
    """What follows the prompt once the reply is part of the conversation: ` reply` and the blank line before
    the next turn, so that prompt + tail + render(next messages) == render(all messages)."""
    content = strip_thinking(reply) if template == "g1" else reply
    return f" {_clean(content)}{TURN_SEPARATOR}"
