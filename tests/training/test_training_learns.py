"""The proof that training works end to end: a short run of ``python -m xlstm train`` on the
bundled corpus ends with a validation loss far below the corpus's unigram entropy (the loss of
the best model that ignores context).  About 300 small steps: seconds on a laptop."""

from __future__ import annotations

import io
import json

from xlstm.cli.train import main
from xlstm.training import default_corpus, load_model, unigram_entropy


def test_short_default_corpus_run_beats_the_unigram_entropy(tmp_path):
    err = io.StringIO()
    argv = ["--hidden", "64", "--batch", "16", "--seq-len", "32", "--lr", "0.01"]
    argv += ["--steps", "300", "--time-limit", "55", "--eval-every", "100", "--no-progress"]
    code = main([*argv, "--out", str(tmp_path), "--sample-length", "0"], stderr=err)
    assert code == 0, err.getvalue()
    summary = json.loads(err.getvalue().splitlines()[-1].removeprefix("summary "))
    entropy = unigram_entropy(default_corpus())
    assert summary["unigram_entropy"] == round(entropy, 4)
    print(
        f"after {summary['steps']} steps ({summary['seconds']} s): validation loss "
        f"{summary['val_loss']:.3f} nats/char vs unigram entropy {entropy:.3f} "
        f"({100 * summary['val_below_unigram']:.0f}% below)"
    )
    assert summary["steps"] >= 250, "the time limit cut the run short: machine overloaded?"
    assert summary["val_loss"] < 0.6 * entropy
    assert load_model(tmp_path / "checkpoint.npz").step == summary["steps"]
