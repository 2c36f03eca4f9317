"""A loopback judge: the loopback OpenAI-compatible server answering in the judge's formats.

For tests and the demo. Grades by markers in the answer: ``wrong`` → 1, ``unsure`` → 3,
anything else → 5 (and ``garble`` in the answer makes it reply in prose, a parse error).
Pairwise, it prefers the answer without ``wrong`` in it; between two equally good answers it
picks A with ``first_bias`` (a position-biased judge), else B, deterministically per prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from monitor.proxy.loopback import LoopbackModel

_SECTION = re.compile(r"\[(User prompt|Assistant answer|Answer A|Answer B)\]\n(.*?)(?=\n\[|\Z)",
                      re.DOTALL)  # fmt: skip


@dataclass
class LoopbackJudge(LoopbackModel):
    """``LoopbackModel`` whose chat answers are grades or pairwise verdicts."""

    first_bias: float = 1.0

    def _text(self, body: dict[str, Any], index: int = 0) -> str:
        messages = body.get("messages") or []
        content = messages[-1].get("content") if messages else ""
        sections = dict(_SECTION.findall(content if isinstance(content, str) else ""))
        if "Answer A" in sections:
            return self._verdict(sections)
        answer = sections.get("Assistant answer", "")
        if "garble" in answer:
            return "I would say this answer is pretty good overall."
        score = 1 if "wrong" in answer else 3 if "unsure" in answer else 5
        return json.dumps({"score": score, "explanation": f"graded by {self.name}"})

    def _verdict(self, sections: dict[str, str]) -> str:
        a_bad, b_bad = ("wrong" in sections["Answer A"]), ("wrong" in sections["Answer B"])
        if a_bad != b_bad:
            winner = "B" if a_bad else "A"
        else:
            prompt = sections.get("User prompt", "").encode()
            draw = int.from_bytes(hashlib.blake2b(prompt, digest_size=4).digest()) / 2**32
            winner = "A" if draw < self.first_bias else "B"
        return json.dumps({"winner": winner, "explanation": f"verdict of {self.name}"})
