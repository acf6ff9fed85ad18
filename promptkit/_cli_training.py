"""The training commands ``promptkit corpus``, ``promptkit train`` and ``promptkit finetune``
(registered on the ``promptkit`` group in :mod:`promptkit.cli`): options parsed here, the work
done by :mod:`promptkit.training`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["corpus_command", "finetune_command", "train_command"]


@click.command("corpus")
@click.option("--out", "out_path", required=True, help="The JSONL file to write.")
@click.option("--documents", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split",
    type=click.Choice(["train", "heldout"]),
    default="train",
    show_default=True,
    help="Which names, label words and phrasings to use (held out ones are for evaluation).",
)
@click.option("--family", "families", multiple=True, help="Only these task families.")
@click.option("--eval-dir", help="Also write held-out evaluation sets into this folder.")
def corpus_command(
    out_path: str,
    documents: int,
    seed: int,
    split: str,
    families: Sequence[str],
    eval_dir: str | None,
) -> None:
    """Generate a training corpus in the formats promptkit renders (see promptkit.training)."""
    from .training._corpus import write_corpus
    from .training._evalsets import write_eval_tasks

    if eval_dir:
        files = write_eval_tasks(eval_dir, seed=seed)
        click.echo(f"wrote {len(files)} evaluation files to {eval_dir}")

    path = write_corpus(
        out_path,
        documents,
        seed=seed,
        split="heldout" if split == "heldout" else "train",
        families=list(families) or None,
    )
    click.echo(f"wrote {documents} documents to {path}")


@click.command("train")
@click.option(
    "--corpus",
    help="A text file, a folder of .txt files, or a .jsonl file (required unless --preset mini, "
    "which generates its own).",
)
@click.option("--out", required=True, help="Folder for the checkpoint (model, config, tokenizer).")
@click.option("--preset", default="small", show_default=True, help="Model shape.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Micro-batches per optimizer step.",
)
@click.option("--context-length", type=click.IntRange(min=8), help="Sequence length.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--tokenizer", help="Folder holding a tokenizer to use (default: train a BPE).")
@click.option("--vocab-size", type=click.IntRange(min=257), default=4096, show_default=True)
@click.option(
    "--bare-capitals/--no-bare-capitals",
    default=False,
    show_default=True,
    help="The trained BPE keeps the space before a capitalised word out of its tokens (a name "
    "is then the same tokens in a sentence and in a JSON string).",
)
@click.option(
    "--answer-weight",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help='Extra loss on answer tokens (a .jsonl corpus\'s "answer" offsets); 0: plain LM.',
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Arithmetic of training: bfloat16 autocasts matrix products (weights stay float32).",
)
@click.option("--eval-every", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=500, show_default=True)
@click.option("--seed", type=int, default=1337, show_default=True)
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.pass_context
def train_command(ctx: click.Context, /, **options: Any) -> None:
    """Pretrain promptkit's own GPT on a corpus (next-token prediction).

    --preset mini is the recipe of promptkit-mini: it generates the corpus and uses the
    recipe's settings unless they are given here.
    """
    from .training import run_training

    given = {
        name
        for name in options
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    result = run_training(options, given=given, progress=True)
    last = result.history[-1] if result.history else {}
    click.echo(
        f"saved {result.out} after {result.steps} steps ({result.tokens_seen:,} tokens); "
        f"validation perplexity {last.get('val_perplexity', float('nan')):.2f} vs unigram "
        f"baseline {result.unigram_perplexity:.2f}"
    )


@click.command("finetune")
@click.argument("template")
@click.option("--data", required=True, help="Training data: JSONL as for eval (inputs, expected).")
@click.option("--out", required=True, help="Output folder; it loads with scratch:DIR (or hf:DIR).")
@click.option(
    "--backend",
    default=None,
    metavar="SPEC",
    help="The scratch: or hf: model to start from. Default: $PROMPTKIT_BACKEND, else "
    "promptkit-mini.",
)
@click.option("--dev", help="Dev data: accuracy each epoch, best epoch kept, early stopping.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Default 1e-4 (LoRA 1e-3).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--lora-rank",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Rank of a LoRA adapter; 0 fine-tunes every weight.",
)
@click.option(
    "--lora-alpha", type=click.IntRange(min=1), help="LoRA scale alpha (default 2 x rank)."
)
@click.option("--merge", is_flag=True, help="Merge the LoRA adapter into the weights.")
@click.option(
    "--lm-weight",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Weight of the LM loss on the prompt tokens (GPT-1's lambda).",
)
@click.option(
    "--shots",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Demonstrations kept in each training prompt.",
)
@click.option(
    "--patience",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Epochs without a better dev accuracy before stopping.",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Arithmetic of training: bfloat16 autocasts matrix products (weights stay float32).",
)
@click.option("--expected-key", default="expected", show_default=True)
@click.option("--strict", is_flag=True, help="An example too long for the model is an error.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
def finetune_command(template: str, backend: str | None, **options: Any) -> None:
    """Fine-tune a local model on TEMPLATE's data (every weight, or a LoRA adapter)."""
    from .training import FinetuneConfig, run_finetune

    spec = backend or os.environ.get("PROMPTKIT_BACKEND") or "scratch"
    result = run_finetune(FinetuneConfig(template=template, backend=spec, **options), progress=True)
    dev = "" if result.dev_accuracy is None else f", dev accuracy {result.dev_accuracy:.1%}"
    dropped = f"; {len(result.dropped)} example(s) too long, left out" if result.dropped else ""
    click.echo(
        f"saved {result.out} (load it as {result.kind}:{result.out}): epoch {result.best_epoch} of "
        f"{result.epochs}{dev}, {result.trainable_parameters:,} parameters trained "
        f"({result.trainable_share:.2%}){dropped}"
    )
