"""The Hugging Face backend: any transformers causal LM of the GPT-2 family (``hf:NAME_OR_PATH``).

Generation goes through transformers' own ``generate`` (so a prompt and seed give the text
transformers gives), batched with left padding and streamed through its ``TextIteratorStreamer``;
scoring shares :class:`~promptkit.backends.local.LocalScoring` with the scratch backend, so both
score the same weights identically. Models load once per process (cached by spec and options).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import BackendError, ConfigurationError
from .base import Completion, GenerationConfig, Usage, cut_at_stop
from .local import LOCAL_CAPABILITIES, LocalScoring, safe_prefix
from .masking import TokenMasker, llg_tokenizer

__all__ = ["GrammarLogitsProcessor", "HFBackend", "from_spec", "load_model"]

_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_CACHE_LOCK = threading.Lock()
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class _Tokenizer:
    """The slice of a transformers tokenizer that scoring needs."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        if hf_tokenizer.eos_token_id is None:
            raise ConfigurationError("the tokenizer has no end-of-text (eos) token")
        self.eot_id: int = hf_tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=False))


class GrammarLogitsProcessor(LogitsProcessor):
    """transformers' hook onto promptkit's :class:`~promptkit.backends.masking.TokenMasker`.

    Pass it to ``model.generate(..., logits_processor=LogitsProcessorList([processor]))`` with
    ``max_new_tokens`` equal to the masker's ``max_tokens``. Each call feeds the tokens sampled
    at the previous step to the matchers, then masks what may not come next; rows whose answer
    is complete may only end (EOS).
    """

    def __init__(self, masker: TokenMasker, prompt_width: int):
        self.masker = masker
        self.prompt_width = prompt_width
        self.done = [False] * len(masker.rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) > self.prompt_width:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[row]:
                    continue
                self.masker.advance(row, token)
                if token == self.masker.eos:
                    self.done[row] = True
        live = [row for row in range(len(self.done)) if not self.done[row]]
        if live:
            self.masker.apply(scores, live)
        return scores

    def complete(self, sequences: torch.Tensor) -> list[bool]:
        """After ``generate``: feed the last tokens and say which rows' answers are complete."""
        if sequences.size(1) > self.prompt_width:
            for row, token in enumerate(sequences[:, -1].tolist()):
                if not self.done[row]:
                    self.masker.advance(row, token)
                    self.done[row] = token == self.masker.eos
        return [self.done[row] or self.masker.finished(row) for row in range(len(self.done))]


class HFBackend(LocalScoring):
    """A transformers causal LM: generate (batched), stream, loglikelihood, perplexity."""

    def __init__(self, model: Any, hf_tokenizer: Any, *, name: str = "hf"):
        self.model = model.eval()
        self.tokenizer = _Tokenizer(hf_tokenizer)
        self.name = name
        self.weights_path: Path | None = None  # the weights file, when loaded from a folder
        config = model.config
        self.context_window = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.capabilities = LOCAL_CAPABILITIES

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def _hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model.base_model(input_ids=ids).last_hidden_state
        return hidden

    def _output_matrix(self) -> torch.Tensor:
        weight: torch.Tensor = self.model.get_output_embeddings().weight
        return weight.t()

    def generate_kwargs(self, config: GenerationConfig) -> dict[str, Any]:
        """Our GenerationConfig as arguments of transformers' ``generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_tokens,
            "pad_token_id": self.tokenizer.eot_id,
            "eos_token_id": self.tokenizer.eot_id,
        }
        if config.temperature == 0:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k or 0,
            )
        if config.stops:
            kwargs.update(stop_strings=list(config.stops), tokenizer=self.tokenizer.hf)
        return kwargs

    def grammar_processor(
        self, config: GenerationConfig, batch: int, prompt_width: int
    ) -> GrammarLogitsProcessor:
        """The logits processor that constrains ``generate`` to ``config.grammar``."""
        vocab = int(self.model.get_output_embeddings().weight.size(0))
        tokenizer = llg_tokenizer(self.tokenizer.hf, self._llguidance_tokenizer, vocab)
        masker = TokenMasker.for_request(config, tokenizer, batch=batch, vocab_size=vocab)
        return GrammarLogitsProcessor(masker, prompt_width)

    def _llguidance_tokenizer(self, vocab_size: int) -> Any:
        from llguidance.hf import from_tokenizer

        try:
            return from_tokenizer(
                self.tokenizer.hf, n_vocab=vocab_size, eos_token=self.tokenizer.eot_id
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"{self.name}: constrained decoding needs a fast (Rust) tokenizer: {exc}"
            ) from None

    def _call_kwargs(self, inputs: dict[str, Any], config: GenerationConfig) -> dict[str, Any]:
        """Everything ``generate`` gets for these inputs: ids, options and the grammar."""
        kwargs = {**inputs, **self.generate_kwargs(config)}
        if config.grammar is not None:
            ids = inputs["input_ids"]
            processor = self.grammar_processor(config, ids.size(0), ids.size(1))
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        return kwargs

    def _inputs(self, prompts: Sequence[str], config: GenerationConfig) -> dict[str, Any]:
        for prompt in prompts:
            self._check_text(prompt)
        hf = self.tokenizer.hf
        hf.padding_side = "left"
        if hf.pad_token_id is None:
            hf.pad_token = hf.eos_token
        encoded = hf(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        self.check_fits(encoded["attention_mask"].sum(-1).tolist(), config)
        return {k: v.to(self.device) for k, v in encoded.items()}

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several prompts at once (left padding, one ``generate`` call)."""
        from transformers import set_seed

        config = config or GenerationConfig()
        inputs = self._inputs(prompts, config)
        kwargs = self._call_kwargs(inputs, config)
        if config.seed is not None:
            set_seed(config.seed)
        with torch.inference_mode():
            output = self.model.generate(**kwargs)
        width = inputs["input_ids"].size(1)
        processors = kwargs.get("logits_processor") or [None]
        complete = processors[0].complete(output) if processors[0] else [False] * len(output)
        completions = []
        for row, prompt_mask, grammar_done in zip(
            output[:, width:].tolist(), inputs["attention_mask"], complete, strict=True
        ):
            ended = self.tokenizer.eot_id in row
            new = row[: row.index(self.tokenizer.eot_id)] if ended else row
            text, stopped = cut_at_stop(self.tokenizer.decode(new), config.stops)
            usage = Usage(prompt_tokens=int(prompt_mask.sum()), completion_tokens=len(new))
            completions.append(
                Completion(
                    text=text,
                    usage=usage,
                    finish_reason="stop" if ended or stopped or grammar_done else "length",
                )
            )
        return completions

    def _stream_complete(self, text: str, config: GenerationConfig) -> Iterator[str]:
        from transformers import TextIteratorStreamer, set_seed

        inputs = self._inputs([text], config)
        streamer = TextIteratorStreamer(
            self.tokenizer.hf, skip_prompt=True, skip_special_tokens=True
        )
        kwargs = {**self._call_kwargs(inputs, config), "streamer": streamer}
        if config.seed is not None:
            set_seed(config.seed)
        failures: list[BaseException] = []
        worker = threading.Thread(
            target=self._generate_into, args=(kwargs, streamer, failures), daemon=True
        )
        worker.start()
        received, sent = "", 0
        for piece in streamer:
            received += piece
            cut, stopped = cut_at_stop(received, config.stops)
            ready = cut if stopped else safe_prefix(received, config.stops)
            if len(ready) > sent:
                yield ready[sent:]
                sent = len(ready)
            if stopped:
                for _ in streamer:  # let generation finish: it stops at the stop string too
                    pass
                break
        worker.join()
        if failures:
            raise BackendError(f"generation failed: {failures[0]}", backend=self.name) from (
                failures[0]
            )
        final, _ = cut_at_stop(received, config.stops)
        if len(final) > sent:
            yield final[sent:]

    def _generate_into(
        self, kwargs: dict[str, Any], streamer: Any, failures: list[BaseException]
    ) -> None:
        """Run ``generate`` feeding ``streamer``; on failure, record it and end the stream."""
        try:
            with torch.inference_mode():
                self.model.generate(**kwargs)
        except Exception as exc:
            failures.append(exc)
            streamer.end()


def load_model(
    name_or_path: str, *, device: str | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """Load (once per process) a causal LM and its tokenizer; raises ConfigurationError."""
    chosen_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chosen_dtype = dtype or "float32"
    key = (name_or_path, chosen_device, chosen_dtype)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(name_or_path, chosen_device, chosen_dtype)
        return _CACHE[key]


def _load(name_or_path: str, device: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigurationError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    folder = Path(os.path.expanduser(name_or_path))
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if folder.is_file() and folder.suffix == ".gguf":  # transformers dequantizes it to dtype
        return _load_gguf(folder, device, torch_dtype)
    if folder.is_dir():
        _check_folder(folder)
        where = f"the local folder {str(folder)!r}"
    else:
        where = "the Hugging Face hub cache" + (" (HF_HUB_OFFLINE is set)" if offline else "")
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"hf: cannot load model {name_or_path!r} from {where}: {_first_line(exc)}. Download "
            "it once where the network allows (it is then cached), or point hf: at a local "
            "folder holding config.json, the weights and the tokenizer files"
        ) from None
    if getattr(config, "is_encoder_decoder", False) or config.model_type in (
        "bert",
        "roberta",
        "distilbert",
        "t5",
    ):
        raise ConfigurationError(
            f"hf: {name_or_path!r} is a {config.model_type!r} model, not a causal language "
            "model; hf: runs decoder-only models such as gpt2 or distilgpt2"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=torch_dtype, local_files_only=offline
        )
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"hf: cannot load {name_or_path!r} from {where}: {_first_line(exc)}"
        ) from None
    loaded: Any = model
    return loaded.to(device).eval(), tokenizer


def _load_gguf(path: Path, device: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigurationError(
            f"hf: cannot load the GGUF file {str(path)!r}: {_first_line(exc)} (transformers "
            "needs the gguf package for GGUF files: pip install gguf)"
        ) from None
    loaded: Any = model
    return loaded.to(device).eval(), tokenizer


def _check_folder(folder: Path) -> None:
    found = sorted(p.name for p in folder.iterdir())
    if not (folder / "config.json").is_file():
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no config.json (found: "
            f"{', '.join(found) or 'nothing'}); it needs config.json, the weights "
            "(model.safetensors) and the tokenizer files"
        )
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no weights (found: {', '.join(found)}); "
            f"expected one of {', '.join(_WEIGHT_FILES)}"
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def from_spec(
    arg: str, *, device: str | None = None, dtype: str | None = None, **options: Any
) -> HFBackend:
    """``hf:NAME_OR_PATH`` with optional ``device=`` and ``dtype=`` (default float32 on CPU).

    NAME_OR_PATH is a hub name, a local folder, a GGUF file (loaded by transformers with
    ``gguf_file=``), or a known model name (``hf:smollm2-135m-instruct``: its pulled file,
    pulled on first use; see ``promptkit models``)."""
    if options:
        raise ConfigurationError(f"unknown option(s) for hf: {', '.join(sorted(options))}")
    if not arg:
        raise ConfigurationError("hf needs a model: hf:gpt2 or hf:/path/to/folder")
    from ..models.registry import lookup, pull

    label = f"hf:{arg}"
    known = lookup(arg) if not Path(os.path.expanduser(arg)).exists() else None
    if known is not None:  # a registry name: its verified file, pulled on first use
        arg, label = str(pull(known.name)), f"hf:{known.name}"
    model, tokenizer = load_model(arg, device=device, dtype=dtype)
    backend = HFBackend(model, tokenizer, name=label)
    folder = Path(os.path.expanduser(arg))
    weights = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    backend.weights_path = folder if folder.is_file() else (weights[0] if weights else None)
    return backend
