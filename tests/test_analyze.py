"""Representation diagnostics against numpy, embeddings against one-by-one forwards."""
import json

import numpy as np
import pytest
import torch

from megajepa.analyze import diagnostics, last_token_states, log_diagnostics, tsne_points


def _synthetic(n=120, d=12, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(n, d))
    a = rng.normal(size=(d, d))
    q, _ = np.linalg.qr(t)
    noise = rng.normal(size=(n, d))
    e = noise - q @ (q.T @ noise)  # orthogonal to the column space of t
    return t, a, e


def test_residual_is_zero_for_an_exact_linear_map():
    t, a, _ = _synthetic()
    diag = diagnostics(t, t @ a)
    assert diag["lstsq_residual"] < 1e-9 and diag["lstsq_residual_relative"] < 1e-10
    assert (diag["n"], diag["dim"]) == (120, 12)


def test_residual_equals_the_known_noise():
    t, a, e = _synthetic()
    diag = diagnostics(t, t @ a + e)
    assert diag["lstsq_residual"] == pytest.approx(np.linalg.norm(e), rel=1e-9)
    assert diag["lstsq_residual_spectral"] == pytest.approx(np.linalg.norm(e, 2), rel=1e-9)
    assert diag["lstsq_residual_relative"] == pytest.approx(
        np.linalg.norm(e) / np.linalg.norm(t @ a + e), rel=1e-9)


def test_singular_values_and_cosine_match_numpy():
    t, a, e = _synthetic(n=40, d=8, seed=3)
    c = t @ a + e
    diag = diagnostics(t, c, top_k=5)
    np.testing.assert_allclose(diag["singular_values"],
                               np.linalg.svd(t - c, compute_uv=False)[:5], rtol=1e-12)
    cos = [np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(t, c)]
    assert diag["cosine_mean"] == pytest.approx(np.mean(cos))
    assert len(diagnostics(t, c)["singular_values"]) == 8  # top-100 of 8 available
    with pytest.raises(ValueError):
        diagnostics(t, c[:, :3])


def test_last_token_states_batched_equals_alone():
    from test_eval_generate import tiny_model

    model = tiny_model(50, seed=2)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(5, 50, (n,), generator=g).tolist() for n in (4, 1, 9, 6, 3)]
    batched = last_token_states(model, seqs, batch_size=3)
    with torch.no_grad():
        alone = np.stack([model(torch.tensor([s]), output_hidden_states=True)
                          .hidden_states[-1][0, -1].numpy() for s in seqs])
    assert batched.shape == (5, 32)
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=1e-5)


class FakeWriter:
    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, float(value), step))

    def add_histogram(self, tag, values, step):
        self.calls.append(("histogram", tag, len(values), step))

    def add_figure(self, tag, fig, step):
        self.calls.append(("figure", tag, type(fig).__name__, step))


def test_log_diagnostics_tags():
    t, a, e = _synthetic(n=30, d=4)
    diag = diagnostics(t, t @ a + e)
    w = FakeWriter()
    log_diagnostics(w, 7, diag, tsne=np.zeros((60, 2)))
    scalars = {c[1]: c[2] for c in w.calls if c[0] == "scalar"}
    assert scalars["diagnostics/lstsq_residual"] == pytest.approx(diag["lstsq_residual"])
    assert scalars["diagnostics/singular_value_top1"] == pytest.approx(diag["singular_values"][0])
    assert {c[1] for c in w.calls if c[0] == "figure"} == {"diagnostics/singular_values",
                                                           "diagnostics/tsne"}
    assert all(c[3] == 7 for c in w.calls)


def test_log_diagnostics_real_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    t, a, e = _synthetic(n=30, d=4)
    with SummaryWriter(tmp_path) as w:
        log_diagnostics(w, 3, diagnostics(t, t @ a + e))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "diagnostics/lstsq_residual" in acc.Tags()["scalars"]
    assert "diagnostics/singular_values" in acc.Tags()["images"]


def test_analyze_cli(tmp_path):
    pytest.importorskip("data_tools.templates")
    from data_tools.templates import pair_views, prompt_ids
    from megajepa.analyze import encode_pairs, main
    from megajepa.eval.run import load_model
    from test_eval_generate import _write, save_tiny

    save_tiny(tmp_path / "m")
    rows = [(f"lines with {w}", f".*{w}.*") for w in
            ["dog", "truck", "a b", "ring", "lake", "dogs", "x", "yy", "z1", "q", "AB", "k9"]]
    _write(tmp_path / "d.jsonl", rows)
    diag = main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"),
                 "--out", str(tmp_path / "o"), "--top-k", "5", "--batch-size", "5"])
    assert (tmp_path / "o" / "tsne.png").stat().st_size > 0
    assert (tmp_path / "o" / "singular_values.png").stat().st_size > 0
    assert json.loads((tmp_path / "o" / "diagnostics.json").read_text())["n"] == 12
    assert len(diag["singular_values"]) == 5
    # Enc(Text) is the prompt's last token, Enc(Code) the code view's, each run alone
    model, tok = load_model(tmp_path / "m", device="cpu")
    recs = [{"user": u, "assistant": c} for u, c in rows[:3]]
    text, code = encode_pairs(model, tok, recs, batch_size=2)
    views = [pair_views(tok, u, c) for u, c in rows[:3]]
    assert views[0][0] == prompt_ids(tok, rows[0][0])
    np.testing.assert_allclose(text, last_token_states(model, [v[0] for v in views], 1),
                               atol=1e-5)
    np.testing.assert_allclose(code, last_token_states(model, [v[1] for v in views], 1),
                               atol=1e-5)


def test_tsne_keeps_known_clusters_apart_and_rows_in_order():
    """Separable input: Enc(Text) in 2 tight clusters, Enc(Code) in 3 others, far apart in
    16-D. In 2-D every point's nearest neighbours share its (view, cluster) label, so the
    clusters survive and rows [:N] are the text, [N:] the code, in input order."""
    from megajepa.analyze import plot_tsne

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 30
    labels = np.array([0, 1] * 12 + [2, 3, 4] * 8)          # 24 text rows, 24 code rows
    points = centers[labels] + rng.normal(size=(48, 16))
    pts = tsne_points(points[:24], points[24:])
    assert pts.shape == (48, 2) and np.isfinite(pts).all()
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1)[:, :4]
    assert (labels[nearest] == labels[:, None]).all()
    # ...and far apart: the closest pair of different clusters is farther than any point's
    # distance to its own cluster's centroid.
    cent = np.stack([pts[labels == c].mean(0) for c in range(5)])
    spread = max(np.linalg.norm(pts[labels == c] - cent[c], axis=1).max() for c in range(5))
    gap = dist[labels[:, None] != labels[None]].min()
    assert gap > spread
    fig = plot_tsne(pts)
    text, code = fig.axes[0].collections[:2]
    np.testing.assert_allclose(text.get_offsets(), pts[:24])
    np.testing.assert_allclose(code.get_offsets(), pts[24:])
