"""Fine-tuning a local model on a template's data (``promptkit finetune``): GPT-1's recipe.

The supervised objective is the loss on the answer tokens the model must write (the label, or
the compact JSON of a record, then end-of-text), each item rendered exactly as ``prompt.run``
renders it for the backend (see :mod:`~promptkit.training._finetune_data`); ``lm_weight`` adds
the language-model loss on the prompt tokens as an auxiliary objective (GPT-1's
``L3 = L2 + lambda * L1``). Either every weight trains (``lora_rank`` 0) or only a LoRA adapter
(peft) on the decoder's projections, which is then merged into the weights or kept apart.
Both of the scratch decoder's families train, GPT-2's and the Llama family's (SmolLM2, a GGUF
file's dequantized weights), chat messages rendered with the model's own chat template; so do
``hf:`` models (transformers'), each into a folder its own backend kind loads (see
:mod:`~promptkit.training._trainee`).

After every epoch the model answers the ``dev`` items through the real run loop (parse and
validate; :func:`promptkit.evaluate.evaluate`), the best epoch's weights are kept (the highest
dev accuracy; of equals, the lowest dev loss on the answer tokens), and training stops early
after ``patience`` epochs without a better one. The same settings and seed
give the same model; an interrupted run continues with ``resume``. Output folders load with
``scratch:DIR`` or ``hf:DIR`` (see :mod:`~promptkit.training._finetune_run`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .._files import load_prompt, resolve_template_path
from .._prompt import Prompt
from ..backends import get_backend
from ..backends.scratch._adapter import weights_fingerprint
from ..errors import ConfigurationError, ContextWindowError
from ..evaluate import EvalItem, check_shots, evaluate, load_dataset
from ._finetune_data import (
    IGNORE,
    Batch,
    EncodedData,
    TrainingExample,
    batch_of,
    encode_items,
    file_sha256,
)
from ._finetune_run import STATE_FILE, FinetuneConfig, FinetuneResult, Run, save_output
from ._memory import available_memory, check_fits_memory, estimate_memory
from ._pretrain import check_output_folder
from ._progress import FinetuneProgress
from ._trainee import Trainee, trainee_for

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "run_finetune"]

logger = logging.getLogger(__name__)

# Settings that may change when a run is resumed; every other one (epochs included: they set
# the learning-rate schedule) must match the saved run.
_RESUMABLE = ("patience", "device", "resume")


StepProgress = Callable[[int, int, float], None]  # (step, total steps, loss)
EpochProgress = Callable[[int, dict[str, float]], None]  # (epoch, metrics)


def finetune(
    config: FinetuneConfig,
    on_step: StepProgress | None = None,
    on_epoch: EpochProgress | None = None,
) -> FinetuneResult:
    """Fine-tune ``config.backend`` on ``config.data`` and save the result to ``config.out``.

    Raises ConfigurationError for bad settings, a backend that is not a local (scratch: or
    hf:) model, an
    ``out`` that already holds a model (without ``resume``), a resumed run whose settings
    differ, or a batch that would not fit in memory (with a batch size that would);
    InputValidationError naming the file, line and field of a bad data line; TemplateError for
    a bad template; ContextWindowError for an example too long (with ``strict``) or when every
    example is; UsageError for more shots than the template has examples.
    """
    config.check()
    template = resolve_template_path(config.template)
    prompt = load_prompt(template)
    if config.shots:
        check_shots([config.shots], prompt.examples)
    key = config.expected_key
    items = load_dataset(config.data, prompt, expected_key=key, require_expected=True)
    dev_items = (
        load_dataset(config.dev, prompt, expected_key=key, require_expected=True)
        if config.dev
        else []
    )
    out = Path(config.out)
    _check_out(out, config.resume)
    trainee = _trainee(config)
    model = trainee.model
    targets = config.lora_targets or trainee.default_lora_targets()
    window = trainee.window
    encode = partial(
        encode_items, prompt, backend=trainee.backend, tokenizer=trainee.tokenizer, window=window
    )
    data = encode(items, shots=config.shots, strict=config.strict, source=config.data)
    if not data.examples:
        raise ContextWindowError(
            f"every example of {config.data} is longer than the context window of {window} "
            "tokens; shorten them or use fewer --shots",
            context_window=window,
        )
    if data.dropped:
        lines = ", ".join(str(line) for line in data.dropped[:10])
        more = ", ..." if len(data.dropped) > 10 else ""
        logger.warning(
            "%d example(s) of %s do not fit the context window of %d tokens and are left out "
            "(lines %s%s; --strict makes this an error)",
            len(data.dropped),
            config.data,
            window,
            lines,
            more,
        )
    dev = _DevSet(dev_items, encode(dev_items, shots=config.shots).examples)
    run = Run(
        config=config,
        settings=_settings(config, template, trainee.backend.name, targets),
        base_sha256=weights_fingerprint(model),
        prompt_name=prompt.name,
        template=template,
        trainee=trainee,
        dropped=data.dropped,
    )
    torch.manual_seed(config.seed)  # the LoRA adapter's initial weights
    model.train()
    peft_model, lora_names = _trainable(trainee, config, targets)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # LoRA's share is of the base model's parameters, the adapter's own left out
    parameters = sum(
        p.numel() for p in model.parameters() if peft_model is None or not p.requires_grad
    )
    _check_memory(trainee, trainable, data, config.batch_size)
    optimizer = torch.optim.AdamW(
        trainable, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    result = FinetuneResult(
        out=out,
        epochs=0,
        best_epoch=0,
        dev_accuracy=None,
        dev_loss=None,
        trainable_parameters=sum(p.numel() for p in trainable),
        parameters=parameters,
        dropped=data.dropped,
        stopped_early=False,
        kind=trainee.kind,
    )
    best = _trained_state(model)
    if config.resume:
        best = _restore(out / STATE_FILE, run.settings, model, optimizer, result)
    _epochs(run, prompt, data, dev, optimizer, result, best, on_step, on_epoch)
    save_output(run, peft_model, lora_names, result)
    (out / STATE_FILE).unlink()  # the run is done: its state (weights and optimizer) goes
    return result


def _trainee(config: FinetuneConfig) -> Trainee:
    """The model to start from; raises ConfigurationError for a backend that is not local."""
    options = {"device": config.device} if config.device else {}
    return trainee_for(get_backend(config.backend, **options))


def _check_memory(
    trainee: Trainee, trainable: list[nn.Parameter], data: EncodedData, batch_size: int
) -> None:
    """Refuse (ConfigurationError) a batch whose estimated memory exceeds what is available."""
    n_layer, n_embd, n_head, vocab_size = trainee.shape()
    estimate = estimate_memory(
        trainable=sum(p.numel() for p in trainable),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab_size,
        tokens=max(e.length for e in data.examples),
    )
    check_fits_memory(estimate, batch_size, available_memory())


@dataclass(frozen=True)
class _DevSet:
    """The dev items (for accuracy through the run loop) and those that fit, encoded (for the
    dev loss that breaks ties of accuracy)."""

    items: list[EvalItem]
    examples: list[TrainingExample]


def _epochs(
    run: Run,
    prompt: Prompt[Any],
    data: EncodedData,
    dev: _DevSet,
    optimizer: torch.optim.Optimizer,
    result: FinetuneResult,
    best: dict[str, torch.Tensor],
    on_step: StepProgress | None,
    on_epoch: EpochProgress | None,
) -> None:
    """Train the epochs left, evaluating and saving the run's state after each; leaves the
    best epoch's weights in the model."""
    config, trainee = run.config, run.trainee
    model, eot = trainee.model, trainee.tokenizer.eot_id
    count = len(data.examples)
    per_epoch = math.ceil(count / config.batch_size)
    total = per_epoch * config.epochs
    device = trainee.device
    since_best = result.epochs - result.best_epoch
    while result.epochs < config.epochs and not result.stopped_early:
        epoch = result.epochs
        order = torch.randperm(count, generator=torch.Generator().manual_seed(config.seed + epoch))
        losses = []
        for start in range(0, count, config.batch_size):
            step = epoch * per_epoch + start // config.batch_size
            chosen = [data.examples[i] for i in order[start : start + config.batch_size].tolist()]
            batch = batch_of(chosen, eot).to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, config.learning_rate)
            objective, answer_loss = _loss(trainee, batch, config.lm_weight, config.precision)
            objective.backward()  # type: ignore[no-untyped-call]
            if config.clip > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.clip
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(answer_loss)
            if on_step is not None:
                on_step(step + 1, total, answer_loss)
        result.epochs = epoch + 1
        row: dict[str, float] = {"epoch": result.epochs, "loss": sum(losses) / len(losses)}
        improved = True
        if dev.items:
            row["dev_accuracy"] = _dev_accuracy(run, prompt, dev.items)
            row["dev_loss"] = _dev_loss(trainee, dev.examples, config.batch_size)
            improved = result.dev_accuracy is None or (
                (row["dev_accuracy"], -row["dev_loss"])
                > (result.dev_accuracy, -(result.dev_loss or 0.0))
            )
        if improved:
            result.best_epoch = result.epochs
            result.dev_accuracy, result.dev_loss = row.get("dev_accuracy"), row.get("dev_loss")
            best, since_best = _trained_state(model), 0
        else:
            since_best += 1
            result.stopped_early = since_best >= config.patience
        result.history.append(row)
        _save_state(run, model, optimizer, result, best)
        if on_epoch is not None:
            on_epoch(result.epochs, row)
    _load_trained_state(model, best)


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first tenth of the steps, then linear decay to a tenth."""
    warmup = max(1, total // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (1 - 0.9 * progress)


def _loss(
    trainee: Trainee, batch: Batch, lm_weight: float, precision: str = "float32"
) -> tuple[torch.Tensor, float]:
    """The objective (answer loss + lm_weight x prompt LM loss) and the answer loss alone;
    ``precision`` "bfloat16" autocasts the matrix products."""
    kind = batch.inputs.device.type
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        logits = trainee.logits(batch.inputs).float()  # (B, T, vocab)
    flat = logits.view(-1, logits.size(-1))  # (B*T, vocab)
    each = F.cross_entropy(flat, batch.targets.view(-1), reduction="none", ignore_index=IGNORE)
    each = each.view(batch.targets.shape)  # (B, T)
    answer = each[batch.answer].mean()
    objective = answer
    if lm_weight and bool(batch.prompt.any()):
        objective = answer + lm_weight * each[batch.prompt].mean()
    return objective, float(answer.item())


@torch.no_grad()
def _dev_loss(trainee: Trainee, examples: list[TrainingExample], batch_size: int) -> float:
    """Mean loss on the dev answers' tokens (math.inf when no dev example fits the window)."""
    trainee.model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chosen = examples[start : start + batch_size]
        batch = batch_of(chosen, trainee.tokenizer.eot_id).to(trainee.device)
        tokens = int(batch.answer.sum())
        total += _loss(trainee, batch, 0.0)[1] * tokens
        count += tokens
    trainee.model.train()
    return total / count if count else math.inf


@torch.no_grad()
def _dev_accuracy(run: Run, prompt: Prompt[Any], dev: list[EvalItem]) -> float:
    """Accuracy on the dev items through the real run loop (one attempt each), prompts
    rendered as for the model being tuned (its chat template included)."""
    backend = run.trainee.evaluation_backend()
    shots = (run.config.shots,)
    (report,) = evaluate(prompt, dev, backend=backend, shots=shots, max_attempts=1)
    run.trainee.model.train()
    return report.accuracy


def _trainable(
    trainee: Trainee, config: FinetuneConfig, targets: tuple[str, ...]
) -> tuple[PeftModel | None, list[str]]:
    """Make the weights to train require gradients: all of them, or a new LoRA adapter's on
    the layers named ``targets`` (returns peft's wrapper and the names of the layers that were
    swapped for ``nn.Linear`` ones)."""
    model = trainee.model
    if not config.lora_rank:
        model.requires_grad_(True)
        return None, []
    names = trainee.prepare_lora(targets)
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigurationError(
            "--lora-rank needs peft: pip install 'promptkit[local]' (or pip install peft)"
        ) from None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or 2 * config.lora_rank,
        target_modules=list(targets),
        fan_in_fan_out=trainee.fan_in_fan_out(targets),
        lora_dropout=0.0,
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # peft asks transformers models a deprecated property
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated")
            return get_peft_model(model, lora), names
    except ValueError as exc:  # peft: no module matched the targets
        raise ConfigurationError(
            f"LoRA cannot wrap the layers {', '.join(targets)} of {trainee.backend.name}: {exc}"
        ) from None


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights being trained, by name."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            parameters[name].copy_(tensor)


def _settings(
    config: FinetuneConfig, template: Path, base: str, targets: tuple[str, ...]
) -> dict[str, Any]:
    """What a resumed run must share with the saved one: its settings (``targets``: the LoRA
    targets chosen) and the fingerprints of its template and data files."""
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE}
    settings["lora_targets"] = list(targets)
    settings["base"] = base
    settings["template_sha256"] = file_sha256(template)
    settings["data_sha256"] = file_sha256(config.data)
    settings["dev_sha256"] = file_sha256(config.dev) if config.dev else None
    return settings


def _check_out(out: Path, resume: bool) -> None:
    """Refuse (ConfigurationError) an ``out`` that holds a model or a run, unless resuming
    one, and a resume with no interrupted run to continue."""
    check_output_folder(out)
    if resume:
        if not (out / STATE_FILE).is_file():
            finished = " (its run finished)" if (out / "config.json").is_file() else ""
            raise ConfigurationError(
                f"nothing to resume in {str(out)!r}{finished}: no {STATE_FILE}, which a run "
                "leaves there until it finishes"
            )
    elif (out / "config.json").exists() or (out / STATE_FILE).exists():
        raise ConfigurationError(
            f"{str(out)!r} already holds a model or a run; choose another --out, remove it, or "
            "pass --resume to continue its run"
        )


def _save_state(
    run: Run,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    result: FinetuneResult,
    best: dict[str, torch.Tensor],
) -> None:
    """The run after an epoch, for ``resume``: trained weights, optimizer, history, best, and
    the random number generator's state."""
    out = Path(run.config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": run.settings,
        "trained": _trained_state(model),
        "optimizer": optimizer.state_dict(),
        "best": best,
        "result": {k: getattr(result, k) for k in _RESULT_FIELDS},
        "rng": torch.get_rng_state(),  # dropout's (hf: models) draws go on as if never stopped
        "saved": time.time(),
    }
    partial = out / (STATE_FILE + ".partial")
    torch.save(state, partial)
    partial.replace(out / STATE_FILE)  # never a half-written state


_RESULT_FIELDS = (
    "epochs",
    "best_epoch",
    "dev_accuracy",
    "dev_loss",
    "stopped_early",
    "history",
)


def _restore(
    path: Path,
    settings: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    result: FinetuneResult,
) -> dict[str, torch.Tensor]:
    """Load a saved run into ``model``, ``optimizer`` and ``result``; returns the best epoch's
    weights. Raises ConfigurationError naming the settings that differ from the saved run's."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = state["settings"]
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        raise ConfigurationError(
            f"cannot resume the run in {str(path.parent)!r}: these settings or files differ "
            f"from the saved run's: {', '.join(differ)}; use the same ones, or another --out"
        )
    _load_trained_state(model, state["trained"])
    optimizer.load_state_dict(state["optimizer"])
    if "rng" in state:
        torch.set_rng_state(state["rng"])
    for name in _RESULT_FIELDS:
        setattr(result, name, state["result"][name])
    best: dict[str, torch.Tensor] = state["best"]
    return best


def run_finetune(config: FinetuneConfig, *, progress: bool = False) -> FinetuneResult:
    """What ``promptkit finetune`` does: :func:`finetune`, with a progress bar on stderr when
    ``progress``. Raises what :func:`finetune` raises."""
    if not progress:
        return finetune(config)
    with FinetuneProgress() as bar:
        return finetune(config, on_step=bar.step, on_epoch=bar.epoch)
