"""Writes the corpora of jsonl.test into DIR and, with --tokenizer, a small byte-level BPE tokenizer.json.

    python jsonl_corpus.py DIR [--tokenizer]

DIR/ids.jsonl: 7 pre-tokenised documents (ids below 256, 5 to 23 tokens,
100 in all) with a blank line; DIR/text.jsonl: 3 text documents; DIR/bad-*.jsonl:
one broken line each after a good one; DIR/short.jsonl: too few tokens for a
block; DIR/tokenizer.json (--tokenizer): BPE with <unk>, <s>, </s> and <s>
prepended, as Mixtral's tokeniser does.
"""

import json
import sys
from pathlib import Path


def main(out: Path, tokenizer: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sizes = [5, 23, 17, 9, 11, 20, 15]
    start = 0
    lines = []
    for size in sizes:
        lines.append(json.dumps({"input_ids": [(start + i) * 37 % 256 for i in range(size)]}))
        start += size
    lines.insert(3, "")
    (out / "ids.jsonl").write_text("\n".join(lines) + "\n")
    texts = ["The quick brown fox jumps over the lazy dog.", "Mixture of experts routes each token.",
             "A compiler you can see into."]
    (out / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    good = json.dumps({"input_ids": [1, 2, 3]})
    bad = {"json": "{\"input_ids\": [1, 2", "keys": "{\"tokens\": [1]}", "ids": "{\"input_ids\": [1, \"2\"]}",
           "vocab": "{\"input_ids\": [1, 256]}", "array": "[1, 2]"}
    for name, line in bad.items():
        (out / f"bad-{name}.jsonl").write_text(good + "\n" + line + "\n")
    (out / "short.jsonl").write_text(good + "\n")
    if tokenizer:
        from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts * 20, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        tok.save(str(out / "tokenizer.json"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--tokenizer" in sys.argv[2:])
