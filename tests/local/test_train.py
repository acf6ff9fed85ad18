"""Pretraining: loss falls below the unigram baseline, runs repeat under a seed, resume works."""

from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner

import promptkit as pk
from promptkit.backends.scratch._checkpoint import load_checkpoint
from promptkit.backends.scratch._tokenizer import Tokenizer
from promptkit.cli import cli
from promptkit.errors import ConfigurationError, UsageError
from promptkit.training._documents import read_documents
from promptkit.training._pretrain import TrainConfig, _encode, lr_at, train
from promptkit.training._recipes import MINI_RECIPE, run_training, train_mini


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    lines = []
    for _ in range(600):  # a learnable pattern: each word is followed by its successor
        start = rng.randrange(len(words))
        lines.append(" ".join(words[(start + i) % len(words)] for i in range(8)) + ".")
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def settings(corpus, out, **overrides):
    options = dict(
        corpus=str(corpus),
        out=str(out),
        preset="tiny",
        steps=40,
        batch_size=8,
        context_length=32,
        lr=3e-3,
        min_lr=3e-4,
        warmup=5,
        vocab_size=300,
        eval_every=20,
        eval_batches=4,
        checkpoint_every=0,
        seed=1,
        device="cpu",
    )
    options.update(overrides)
    return TrainConfig(**options)


def test_validation_perplexity_falls_well_below_the_unigram_baseline(corpus, tmp_path):
    seen = []
    result = train(settings(corpus, tmp_path / "run"), on_step=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == list(range(1, 41))
    assert all(m["tokens_per_s"] > 0 and m["lr"] > 0 for _, m in seen)
    assert [h["step"] for h in result.history] == [20, 40]
    assert result.final_val_perplexity < result.unigram_perplexity / 2
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["step"] == 40 and saved["training"]["preset"] == "tiny"
    log = (tmp_path / "run" / "training_log.jsonl").read_text().splitlines()
    assert len(log) == 2


def test_same_seed_same_run(corpus, tmp_path):
    first = train(settings(corpus, tmp_path / "a", steps=6, eval_every=3))
    second = train(settings(corpus, tmp_path / "b", steps=6, eval_every=3))
    assert first.history == second.history
    model_a, _ = load_checkpoint(tmp_path / "a")
    model_b, _ = load_checkpoint(tmp_path / "b")
    for (name, a), (_, b) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_continues_exactly(corpus, tmp_path):
    straight = train(settings(corpus, tmp_path / "straight", steps=8, eval_every=4))

    class Crash(Exception):
        pass

    def crash_after_step_4(step, metrics):
        if step == 4:
            raise Crash

    config = settings(corpus, tmp_path / "resumed", steps=8, eval_every=4, checkpoint_every=4)
    with pytest.raises(Crash):
        train(config, on_step=crash_after_step_4)
    config.resume = True
    resumed = train(config)
    assert resumed.history == straight.history
    a, _ = load_checkpoint(tmp_path / "straight")
    b, _ = load_checkpoint(tmp_path / "resumed")
    assert all(
        torch.allclose(x, y, atol=1e-6)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """A .jsonl corpus whose documents end with an answer (the first word, repeated), each
    with the offset where its answer starts."""
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    path = tmp_path_factory.mktemp("answered") / "corpus.jsonl"
    with path.open("w") as out:
        for _ in range(600):
            picked = rng.sample(words, 4)
            prompt = " ".join(picked) + " first:"
            text = f"{prompt} {picked[0]}"
            out.write(json.dumps({"family": "copy", "text": text, "answer": len(prompt)}) + "\n")
    return path


def test_answer_mask_covers_exactly_the_answers(answered):
    documents = read_documents(answered)[:20]
    tokenizer = Tokenizer.train([text for text, _ in documents], vocab_size=300)
    ids, mask = _encode(documents, tokenizer)
    texts = tokenizer.decode(ids.tolist()).split("<|endoftext|>")[:-1]
    assert texts == [text for text, _ in documents]
    answers = [t for t, m in zip(ids.tolist(), mask.tolist(), strict=True) if m]
    expected = "<|endoftext|>".join(text[start:] for text, start in documents) + "<|endoftext|>"
    assert tokenizer.decode(answers) == expected  # each answer, and its end-of-text
    plain = read_documents(answered)[:3]
    _, none = _encode([(text, None) for text, _ in plain], tokenizer)
    assert not none.any()


def test_bare_capitals_keep_names_the_same_tokens_after_a_space_or_a_quote():
    text = 'Ana Lima moved to Porto with Kenji. {"name":"Ana Lima","city":"Porto"} ' * 30
    bare = Tokenizer.train(
        [text, "the cat and the dog sat on a mat. " * 30], 320, bare_capitals=True
    )
    plain = Tokenizer.train([text, "the cat and the dog sat on a mat. " * 30], 320)
    for tokenizer in (bare, plain):
        assert tokenizer.decode(tokenizer.encode(text)) == text  # lossless either way
    for name in ("Ana Lima", "Porto", "Okonkwo"):  # the last is never seen in training
        spaced, quoted = bare.encode(" " + name), bare.encode('"' + name)
        assert spaced[1:] == quoted[1:] and bare.decode(spaced[:1]) == " "
    for name in ("Ana", "Porto"):  # GPT-2's scheme: the space is inside the name's token
        assert plain.decode(plain.encode(" " + name)[:1]) == " " + name

    def pieces(tokenizer: Tokenizer, text: str) -> list[str]:
        return [tokenizer.decode([i]) for i in tokenizer.encode(text)]

    assert pieces(bare, " the cat") == pieces(plain, " the cat") == [" the", " cat"]
    assert len(bare.encode(text)) > len(plain.encode(text))  # the price: a token per capital


def test_answer_loss_is_logged_and_changes_the_training(answered, tmp_path):
    kwargs = dict(steps=30, eval_every=15, context_length=32)
    plain = train(settings(answered, tmp_path / "plain", **kwargs))
    weighted = train(settings(answered, tmp_path / "weighted", answer_weight=4.0, **kwargs))
    assert all("val_answer_loss" in row for row in plain.history + weighted.history)
    # the objective weighs the answers more: the answer loss falls further, for the same steps
    assert weighted.history[-1]["val_answer_loss"] < plain.history[-1]["val_answer_loss"]
    saved = json.loads((tmp_path / "weighted" / "config.json").read_text())
    assert saved["training"]["answer_weight"] == 4.0


def test_bad_answer_offsets(answered, tmp_path):
    text = "alpha beta first: alpha"
    for bad in (-1, len(text), "3", True, 2.5):
        path = tmp_path / "bad.jsonl"
        lines = [{"text": "x"}, {"text": text, "answer": bad}]
        path.write_text("\n".join(json.dumps(line) for line in lines))
        with pytest.raises(ConfigurationError, match=r"bad.jsonl:2: 'answer' must be .* got"):
            read_documents(path)
    with pytest.raises(ConfigurationError, match="answer_weight must be"):
        train(settings(answered, tmp_path / "o", answer_weight=-1.0))


def test_bfloat16_training_learns_and_keeps_float32_weights(corpus, tmp_path):
    result = train(settings(corpus, tmp_path / "bf16", precision="bfloat16"))
    assert result.final_val_perplexity < result.unigram_perplexity / 2
    model, _ = load_checkpoint(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ConfigurationError, match="precision must be 'float32' or 'bfloat16'"):
        train(settings(corpus, tmp_path / "x", precision="float16"))


def test_learning_rate_schedule():
    config = TrainConfig(corpus="x", out="y", steps=100, warmup=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, config) == pytest.approx(0.1)
    assert lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(55, config) == pytest.approx(0.55)
    assert lr_at(100, config) == pytest.approx(0.1)


def test_bad_training_input(corpus, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("too short")
    with pytest.raises(UsageError, match="fewer than one context window"):
        train(settings(small, tmp_path / "o"))
    with pytest.raises(ConfigurationError, match="unknown preset"):
        train(settings(corpus, tmp_path / "o", preset="enormous"))
    with pytest.raises(ConfigurationError, match="no corpus"):
        train(settings(tmp_path / "missing.txt", tmp_path / "o"))
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        train(settings(corpus, tmp_path / "fresh", resume=True))
    with pytest.raises(ConfigurationError, match="steps must be positive"):
        train(settings(corpus, tmp_path / "o", steps=0))


def test_trained_model_is_a_backend_and_cli_trains_from_a_folder(corpus, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "one.txt").write_text(corpus.read_text())
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--corpus",
            str(folder),
            "--out",
            str(tmp_path / "model"),
            "--preset",
            "tiny",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--vocab-size",
            "300",
            "--context-length",
            "32",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and "unigram baseline" in result.output
    backend = pk.get_backend(f"scratch:{tmp_path / 'model'}", device="cpu")
    completion = backend.generate("alpha beta", pk.backends.GenerationConfig(max_tokens=5))
    assert completion.usage.completion_tokens <= 5
    text = tmp_path / "eval.txt"
    text.write_text("alpha beta gamma delta omega sigma alpha beta gamma.")
    out = CliRunner().invoke(
        cli, ["perplexity", str(text), "--backend", f"scratch:{tmp_path / 'model'}", "--json"]
    )
    assert out.exit_code == 0, out.output
    figures = json.loads(out.output)
    assert figures["tokens"] > 0 and figures["perplexity"] > 1


def test_the_mini_recipe_generates_its_corpus_and_applies_its_settings(tmp_path, monkeypatch):
    from promptkit.training import _recipes as train_module

    monkeypatch.setattr(train_module, "MINI_CORPUS", {"documents": 120, "seed": 0})
    out = tmp_path / "mini"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--preset",
            "mini",
            "--out",
            str(out),
            "--steps",
            "2",
            "--vocab-size",
            "600",
            "--eval-every",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == 120
    model, _ = load_checkpoint(out)
    assert model.config.context_length == 512 and model.config.n_layer == 4
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["batch_size"] == train_module.MINI_RECIPE["batch_size"]
    assert training["seed"] == train_module.MINI_RECIPE["seed"]
    assert training["answer_weight"] == train_module.MINI_RECIPE["answer_weight"] > 0
    assert training["precision"] == "bfloat16" and model.config.alibi
    assert training["bare_capitals"] is True
    _, tokenizer = load_checkpoint(out)
    assert tokenizer.encode('"Ana')[1:] == tokenizer.encode(" Ana")[1:]
    assert training["steps"] == 2  # given on the command line: it wins
    missing = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--corpus is required" in missing.output


def test_train_mini_is_the_recipe_in_one_call(corpus, tmp_path):
    out = tmp_path / "mini"
    steps = []
    result = train_mini(
        out,
        corpus=corpus,
        on_step=lambda step, metrics: steps.append(step),
        steps=2,
        batch_size=2,
        context_length=32,
        vocab_size=300,
        eval_every=1,
        eval_batches=1,
    )
    assert steps == [1, 2] and result.steps == 2 and len(result.history) == 2
    assert not (out / "corpus.jsonl").exists()  # the corpus given is used, none generated
    model, _ = load_checkpoint(out)
    assert model.config.alibi and model.config.smear_keys and model.config.conv_width == 4
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["preset"] == "mini" and training["corpus"] == str(corpus)
    for name in ("lr", "warmup", "seed", "answer_weight", "precision", "bare_capitals"):
        assert training[name] == MINI_RECIPE[name], name  # the recipe's settings...
    assert training["batch_size"] == 2 and training["steps"] == 2  # ...unless given


@pytest.mark.timeout(60)
def test_train_mini_and_run_training_name_a_bad_setting_before_any_work(tmp_path):
    # checked before the recipe generates its 100,000-document corpus (minutes)
    with pytest.raises(ConfigurationError, match=r"unknown training setting\(s\): stepz;"):
        train_mini(tmp_path / "a", stepz=3)
    with pytest.raises(
        ConfigurationError, match="always trains the 'mini' preset; got preset among the settings"
    ):
        train_mini(tmp_path / "a", preset="small")
    assert not (tmp_path / "a").exists()
    options = {"corpus": "c.txt", "out": str(tmp_path / "b"), "preset": "small", "colour": 1}
    with pytest.raises(ConfigurationError, match=r"unknown training setting\(s\): colour;"):
        run_training(options)
    with pytest.raises(UsageError, match="--corpus is required"):
        run_training({"corpus": None, "out": str(tmp_path / "c"), "preset": "small"})
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_training_exports_resolve():
    import promptkit.training

    for name in promptkit.training.__all__:
        assert getattr(promptkit.training, name) is not None
    assert promptkit.training.train_mini is train_mini
