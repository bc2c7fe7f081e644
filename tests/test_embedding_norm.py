"""benchmarks/embedding_norm.py: a voice's embeddings are standardised by its own earlier clips only, and the
analysis of a real (one-epoch) LOSO run scores the model exactly as its training run did."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from train.corpus import discover, load_corpus
from train.fit import TrainConfig
from train.run import default_frontend, train_one

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embedding_norm.py"


def _module():
    spec = importlib.util.spec_from_file_location("embedding_norm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_new_voice_is_standardised_by_its_earlier_clips_and_a_training_voice_by_its_training_clips() -> None:
    en = _module()
    rng = np.random.default_rng(3)
    speakers = np.array(["a"] * 8 + ["b"] * 6)
    roles = np.array(["train"] * 8 + ["test"] * 6)
    emb = rng.normal(size=(14, 5)) + 3.0
    out = en.per_speaker(emb, speakers, roles, ceiling=False)
    np.testing.assert_allclose(out[:8].mean(0), 0, atol=1e-12)  # a training voice: its own statistics
    np.testing.assert_allclose(out[:8].std(0), 1)

    order = 8 + en.scoring_order(6)
    changed = emb.copy()
    changed[order[-1]] += 100.0  # the last clip in scoring order cannot reach an earlier clip's input
    again = en.per_speaker(changed, speakers, roles, ceiling=False)
    np.testing.assert_array_equal(again[order[:-1]], out[order[:-1]])
    prior_mean, prior_std = emb[:8].mean(0), emb[:8].std(0)
    np.testing.assert_allclose(out[order[0]], (emb[order[0]] - prior_mean) / prior_std)  # first clips: the prior
    k = en.PRIOR_CLIPS + 1
    before = emb[order[:k]]
    np.testing.assert_allclose(out[order[k]], (emb[order[k]] - before.mean(0)) / before.std(0))
    ceiling = en.per_speaker(changed, speakers, roles, ceiling=True)
    assert not np.allclose(ceiling[order[0]], again[order[0]])  # the ceiling does see later clips


def test_the_analysis_of_a_loso_run_scores_the_model_as_training_did(synthetic_corpus: Path, tmp_path: Path) -> None:
    clips = discover(synthetic_corpus)
    tcfg = TrainConfig(model="spectrogram_resnet", epochs=1, batch_size=16, warmup_epochs=1, speaker_norm="bins")
    run = tmp_path / "run"
    spec = default_frontend("spectrogram_resnet")
    train_one(run, clips, load_corpus(synthetic_corpus, clips), "loso", 0, tcfg, spec, mcu_probe=False, show_progress=False)

    cmd = [sys.executable, str(SCRIPT), str(run), "--data", str(synthetic_corpus), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    [result] = json.loads((tmp_path / "out" / "embedding_norm.json").read_text())
    fold = result["folds"]["run"]
    trained = json.loads((run / "metrics.json").read_text())["test"]
    assert fold["model"]["clips"] == trained["clips"] == 18
    assert fold["model"]["accuracy"] == trained["accuracy"]  # the causal inputs training scored
    assert set(fold) == {"model", "refit", "per-speaker", "all-clips"}
    assert "| run | per-speaker:" in done.stdout and done.stdout == (tmp_path / "out" / "embedding_norm.md").read_text()

    not_a_run = [sys.executable, str(SCRIPT), str(tmp_path), "--data", str(synthetic_corpus)]
    bad = subprocess.run(not_a_run, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "no model.keras" in bad.stderr
