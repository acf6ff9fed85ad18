"""Pretraining: next-token prediction on a text corpus, maximising sum log P(u_i | u_<i).

AdamW with decoupled weight decay (matrices only), linear warm-up then cosine decay of the
learning rate, gradient clipping and accumulation, a held-out split whose loss and perplexity
are logged next to the unigram baseline, checkpoints at intervals, resume, and the same run
twice under the same seed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..backends.scratch._checkpoint import load_checkpoint, save_checkpoint
from ..backends.scratch._tokenizer import Tokenizer
from ..backends.scratch.gpt2 import GPT, preset
from ..errors import ConfigurationError, UsageError
from ._documents import read_documents

__all__ = ["Progress", "TrainConfig", "TrainResult", "check_output_folder", "train"]

STATE_FILE = "trainer_state.pt"
LOG_FILE = "training_log.jsonl"


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults train the ``small`` preset on a CPU."""

    corpus: str  # a text file, or a folder of .txt files
    out: str  # checkpoint folder (written at intervals and at the end)
    preset: str = "small"  # model shape (see gpt2.PRESETS); vocab follows the tokenizer
    steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    context_length: int | None = None  # sequence length (default: the preset's)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup: int = 100  # steps of linear warm-up
    weight_decay: float = 0.1  # AdamW decay on weight matrices
    clip: float = 1.0  # gradient-norm clipping (0: off)
    dropout: float = 0.0  # dropout inside the model while training
    # Arithmetic of the forward and backward passes: "bfloat16" autocasts matrix products
    # (weights and optimizer state stay float32); 1.6x faster on CPUs with AMX or AVX-512 BF16.
    precision: Literal["float32", "bfloat16"] = "float32"
    # Extra loss on answer tokens (a .jsonl corpus's "answer" offsets): the objective is the
    # mean next-token loss plus answer_weight times the mean loss on answer tokens. 0: plain LM.
    answer_weight: float = 0.0
    tokenizer: str | None = None  # folder with a tokenizer to use; else train one
    vocab_size: int = 4096  # size of the BPE trained when no tokenizer is given
    # the trained BPE keeps the space before a capitalised word out of the word's tokens, so a
    # name is the same tokens in a sentence and inside a JSON string (Tokenizer.train)
    bare_capitals: bool = False
    val_fraction: float = 0.1  # tail of the corpus held out for validation
    eval_every: int = 100  # steps between validation runs
    eval_batches: int = 8  # micro-batches per validation run
    checkpoint_every: int = 500  # steps between checkpoints (0: only at the end)
    seed: int = 1337  # makes the run repeatable
    device: str | None = None  # cpu or cuda (default: cuda when available)
    resume: bool = False  # continue from the checkpoint in ``out``

    def check(self) -> None:
        """Raises ConfigurationError naming every setting out of its range."""
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches")
        bad = [f"{name} must be positive" for name in positive if getattr(self, name) <= 0]
        if not 0 < self.val_fraction < 1:
            bad.append("val_fraction must be between 0 and 1")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            bad.append("need 0 <= min_lr <= lr and lr > 0")
        if self.precision not in ("float32", "bfloat16"):
            bad.append(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if not 0 <= self.answer_weight < math.inf:
            bad.append("answer_weight must be a finite number >= 0")
        if bad:
            raise ConfigurationError("invalid training settings: " + "; ".join(bad))
        check_output_folder(self.out)
        if not self.resume and (Path(self.out) / "model.safetensors").exists():
            raise ConfigurationError(
                f"--out {self.out!r} already holds a model; choose another folder, remove it, "
                "or pass --resume to continue its run"
            )


def check_output_folder(out: str | Path) -> None:
    """Check, before any work, that ``out`` can become the folder a run writes into: it is no
    file, and a folder can be made where it will be (probed in the nearest folder above it
    that exists, leaving nothing behind). Raises ConfigurationError saying which."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigurationError(f"--out {str(out)!r} is a file; give a folder to write into")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".promptkit-probe-", dir=existing))
    except OSError as exc:
        raise ConfigurationError(
            f"--out {str(out)!r} cannot be created: {str(existing)!r} refuses new folders "
            f"({exc.strerror or exc}); give a folder this user can write"
        ) from None


@dataclass
class TrainResult:
    """What a run produced: where, and the curve of validation loss against steps."""

    out: Path
    steps: int
    tokens_seen: int
    unigram_perplexity: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def final_val_perplexity(self) -> float:
        return self.history[-1]["val_perplexity"] if self.history else math.inf


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def _split(
    ids: torch.Tensor, config: TrainConfig, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    cut = int(len(ids) * (1 - config.val_fraction))
    train_ids, val_ids = ids[:cut], ids[cut:]
    for name, part in (("training", train_ids), ("validation", val_ids)):
        if len(part) <= window + 1:
            raise UsageError(
                f"the corpus is too small: its {name} part has {len(part)} tokens, fewer than one "
                f"context window ({window} + 1); use a larger corpus or a smaller context_length"
            )
    return train_ids, val_ids


def unigram_perplexity(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity of an add-one-smoothed unigram model: the baseline a GPT must beat."""
    counts = Counter(train_ids.tolist())
    total = len(train_ids) + vocab
    nll = -sum(math.log((counts.get(t, 0) + 1) / total) for t in val_ids.tolist())
    return math.exp(nll / len(val_ids))


def _encode(
    documents: list[tuple[str, int | None]], tokenizer: Tokenizer
) -> tuple[torch.Tensor, torch.Tensor]:
    """All documents as one id sequence, each followed by end-of-text, and a mask of the
    answer tokens: those that end past the document's answer offset, and its end-of-text."""
    ids: list[int] = []
    answer: list[bool] = []
    texts = [text for text, _ in documents]
    for (_, start), (tokens, ends) in zip(
        documents, tokenizer.encode_batch_with_ends(texts), strict=True
    ):
        ids += [*tokens, tokenizer.eot_id]
        if start is None:
            answer += [False] * (len(tokens) + 1)
        else:
            answer += [end > start for end in ends] + [True]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(answer, dtype=torch.bool)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, answer mask


def _batch(
    data: tuple[torch.Tensor, torch.Tensor],
    size: int,
    window: int,
    generator: torch.Generator,
    device: str,
) -> Batch:
    ids, answer = data
    starts = torch.randint(len(ids) - window - 1, (size,), generator=generator).tolist()
    x = torch.stack([ids[s : s + window] for s in starts])
    y = torch.stack([ids[s + 1 : s + 1 + window] for s in starts])
    mask = torch.stack([answer[s + 1 : s + 1 + window] for s in starts])
    return x.to(device), y.to(device), mask.to(device)


def _losses(
    model: GPT, batch: Batch, precision: Literal["float32", "bfloat16"] = "float32"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean next-token loss over every target, and over the answer targets (None if none)."""
    x, y, mask = batch
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        logits = model.logits(model(x)).float()  # (B, T, vocab)
    each = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="none")
    flat = mask.reshape(-1)
    return each.mean(), (each[flat].mean() if bool(flat.any()) else None)


@torch.no_grad()
def _validate(
    model: GPT,
    val: tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    window: int,
    device: str,
) -> tuple[float, float | None]:
    """Mean validation loss, and mean loss on the answer tokens (None if the batches held
    none)."""
    model.eval()
    generator = torch.Generator().manual_seed(config.seed + 1)  # the same batches every time
    losses, answer_total, answer_count = [], 0.0, 0
    for _ in range(config.eval_batches):
        batch = _batch(val, config.batch_size, window, generator, device)
        loss, answer = _losses(model, batch, config.precision)
        losses.append(loss.item())
        if answer is not None:
            count = int(batch[2].sum())
            answer_total += answer.item() * count
            answer_count += count
    model.train()
    return sum(losses) / len(losses), (answer_total / answer_count if answer_count else None)


def _optimizer(model: GPT, config: TrainConfig, device: str) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=device == "cuda")


Progress = Callable[[int, dict[str, float]], None]
Phase = Callable[[str], None]


def train(
    config: TrainConfig, on_step: Progress | None = None, on_phase: Phase | None = None
) -> TrainResult:
    """Pretrain a GPT on ``config.corpus`` and save it to ``config.out``.

    ``on_phase(text)`` is called as each phase before the steps begins (training the
    tokenizer, encoding the corpus, then the steps), after the settings and files are checked;
    ``on_step(step, metrics)`` is called after every optimizer step (metrics: loss, lr,
    tokens_per_s, and val_loss/val_perplexity on evaluation steps). Raises ConfigurationError
    for bad settings or files, UsageError for a corpus smaller than a context window.
    """
    announce = on_phase or (lambda text: None)
    config.check()
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(config.out)
    torch.manual_seed(config.seed)
    documents = read_documents(config.corpus)
    state: dict[str, Any] | None = None
    if config.resume:
        if not (out / STATE_FILE).is_file():
            raise ConfigurationError(f"nothing to resume in {str(out)!r}: no {STATE_FILE}")
        model, tokenizer = load_checkpoint(out, device=device)
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
    else:
        if config.tokenizer:
            tokenizer = Tokenizer.from_folder(config.tokenizer)
        else:
            characters = sum(len(text) for text, _ in documents)
            announce(
                f"training the tokenizer: a {config.vocab_size:,}-token BPE on "
                f"{len(documents):,} document(s), {characters:,} characters"
            )
            tokenizer = Tokenizer.train(
                (text for text, _ in documents),
                vocab_size=config.vocab_size,
                bare_capitals=config.bare_capitals,
            )
        overrides: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, "dropout": config.dropout}
        if config.context_length:
            overrides["context_length"] = config.context_length
        model = GPT(preset(config.preset, **overrides)).to(device)
    window = model.config.context_length
    announce("encoding the corpus")
    ids, answer = _encode(documents, tokenizer)
    train_ids, val_ids = _split(ids, config, window)
    cut = len(train_ids)
    train_data, val_data = (train_ids, answer[:cut]), (val_ids, answer[cut:])
    baseline = unigram_perplexity(train_ids, val_ids, tokenizer.vocab_size)
    tokens_per_step = config.batch_size * config.grad_accum * window
    done_before = state["step"] if state is not None else 0
    announce(f"training: {config.steps - done_before:,} steps of {tokens_per_step:,} tokens")
    optimizer = _optimizer(model, config, device)
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(out=out, steps=0, tokens_seen=0, unigram_perplexity=baseline)
    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_step, result.tokens_seen = state["step"], state["tokens_seen"]
        result.history = state["history"]
    model.train()
    for step in range(start_step, config.steps):
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        total = 0.0
        for _ in range(config.grad_accum):
            batch = _batch(train_data, config.batch_size, window, generator, device)
            loss, answer_loss = _losses(model, batch, config.precision)
            objective = loss
            if config.answer_weight and answer_loss is not None:
                objective = loss + config.answer_weight * answer_loss
            (objective / config.grad_accum).backward()  # type: ignore[no-untyped-call]
            total += loss.item() / config.grad_accum
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.tokens_seen += tokens_per_step
        metrics = {
            "loss": total,
            "lr": lr_at(step, config),
            "tokens_per_s": tokens_per_step / (time.perf_counter() - began),
        }
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            val_loss, val_answer_loss = _validate(model, val_data, config, window, device)
            metrics.update(val_loss=val_loss, val_perplexity=math.exp(val_loss))
            row = {
                "step": done,
                "train_loss": total,
                "val_loss": val_loss,
                "val_perplexity": math.exp(val_loss),
            }
            if val_answer_loss is not None:
                metrics["val_answer_loss"] = row["val_answer_loss"] = val_answer_loss
            result.history.append(row)
        if done == config.steps or (
            config.checkpoint_every and done % config.checkpoint_every == 0
        ):
            _save(model, tokenizer, optimizer, generator, result, done, config, out)
        result.steps = done
        if on_step is not None:
            on_step(done, metrics)
    return result


def _save(
    model: GPT,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    result: TrainResult,
    step: int,
    config: TrainConfig,
    out: Path,
) -> None:
    training = {k: v for k, v in asdict(config).items() if k not in ("out", "resume")}
    save_checkpoint(
        model,
        tokenizer,
        out,
        step=step,
        training=training,
        unigram_perplexity=result.unigram_perplexity,
    )
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "tokens_seen": result.tokens_seen,
            "history": result.history,
        },
        out / STATE_FILE,
    )
    with (out / LOG_FILE).open("w", encoding="utf-8") as log:
        for row in result.history:
            log.write(json.dumps(row) + "\n")
