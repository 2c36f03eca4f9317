"""Fine-tune the packaged MiniLM with LoRA adapters and a head; save what ``AdaptedClassifier``
loads (detectors/adapted.py).

One loop for every adapted detector: examples are a text or a (context, text) pair and a label
index; the loss is binary cross-entropy for one label, cross-entropy for several. peft builds
the low-rank adapters on the attention and feed-forward projections; only they and the head
train. Seeded and single-threaded-deterministic on CPU (torch's own kernels), so the same data
and seed give the same weights; a GPU is used when visible (faster, not bit-identical).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.adapted import WEIGHTS, AdapterSpec, encode_inputs, mean_pool
from detectors.embedding import default_model_path, resolve_device

TARGET_MODULES = ("query", "key", "value", "dense")


@dataclass(frozen=True)
class Example:
    """One training example: the text, an optional context it is judged in, a label index."""

    text: str
    label: int
    context: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    labels: tuple[str, ...]
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 3e-4
    head_learning_rate: float = 1e-3
    max_length: int = 128
    seed: int = 0
    device: str = "auto"
    log_every: int = 50


class Trained:
    """The adapted model in memory: scores inputs the way ``AdaptedClassifier`` will."""

    def __init__(self, model: Any, head: Any, tokenizer: Any, config: TrainConfig) -> None:
        self.model, self.head, self.tokenizer, self.config = model, head, tokenizer, config

    def logits(self, examples: Sequence[Example], batch_size: int = 128) -> npt.NDArray[np.float32]:
        """One row of logits per example, batched by length (little padding)."""
        import torch

        self.model.eval()
        sizes = [len(e.text) + len(e.context or "") for e in examples]
        order = sorted(range(len(examples)), key=sizes.__getitem__)
        out = np.zeros((len(examples), len(self.config.labels)), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                picked = order[start : start + batch_size]
                batch = [examples[i] for i in picked]
                out[picked] = _forward(self, batch).float().cpu().numpy()
        self.model.train()
        return out

    def save(self, directory: Path, thresholds: dict[str, float], metadata: dict[str, Any]) -> None:
        """``adapter.safetensors`` (float16 factors and head) and ``adapter.json``."""
        from safetensors.torch import save_file

        tensors = {}
        for name, value in self.model.state_dict().items():
            if ".lora_A." in name or ".lora_B." in name:
                module = name.split("base_model.model.", 1)[-1].split(".lora_", 1)[0]
                part = "A" if ".lora_A." in name else "B"
                tensors[f"lora.{module}.{part}"] = value.detach().cpu().half().contiguous()
        tensors["head.weight"] = self.head.weight.detach().cpu().half().contiguous()
        tensors["head.bias"] = self.head.bias.detach().cpu().half().contiguous()
        directory.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / WEIGHTS))
        c = self.config
        AdapterSpec(c.labels, c.rank, c.alpha, c.max_length, thresholds, metadata).write(directory)


def _forward(trained: Trained, batch: Sequence[Example]) -> Any:
    inputs = [(e.context, e.text) if e.context is not None else e.text for e in batch]
    encoded = encode_inputs(trained.tokenizer, inputs, trained.config.max_length)
    device = next(trained.model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    states = trained.model(**encoded).last_hidden_state
    return trained.head(mean_pool(states, encoded["attention_mask"]))


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def train(
    examples: Sequence[Example],
    config: TrainConfig,
    *,
    log: Callable[[str], None] = print,
) -> Trained:
    """Fine-tune on ``examples`` (shuffled with the seed) for ``config.epochs``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    seed_everything(config.seed)
    base = default_model_path()
    device = resolve_device(config.device)
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(TARGET_MODULES),
    )  # fmt: skip
    model = get_peft_model(AutoModel.from_pretrained(base, local_files_only=True), lora)
    head = torch.nn.Linear(model.config.hidden_size, len(config.labels))
    model.to(device).train()
    head.to(device)
    trained = Trained(model, head, AutoTokenizer.from_pretrained(base), config)
    groups: list[dict[str, Any]] = [
        {"params": [p for p in model.parameters() if p.requires_grad]},
        {"params": list(head.parameters()), "lr": config.head_learning_rate},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=0.01)
    order = np.random.default_rng(config.seed).permutation(len(examples))
    steps = max(1, int(len(examples) * config.epochs) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[config.learning_rate, config.head_learning_rate],
        total_steps=steps, pct_start=0.1,
    )  # fmt: skip
    started, seen = time.perf_counter(), 0.0
    for step in range(steps):
        picked = [order[(step * config.batch_size + i) % len(order)]
                  for i in range(config.batch_size)]  # fmt: skip
        batch = [examples[i] for i in picked]
        loss = _loss(_forward(trained, batch), [e.label for e in batch], len(config.labels))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        seen += float(loss.detach())
        if (step + 1) % config.log_every == 0 or step + 1 == steps:
            rate = (step + 1) * config.batch_size / (time.perf_counter() - started)
            log(f"step {step + 1}/{steps} loss {seen / config.log_every:.4f} ({rate:.0f} ex/s)")
            seen = 0.0
    return trained


def _loss(logits: Any, labels: list[int], n_labels: int) -> Any:
    import torch

    target = torch.tensor(labels, device=logits.device)
    if n_labels == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    return torch.nn.functional.cross_entropy(logits, target)
