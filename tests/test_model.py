"""Model construction: presets, seeded init, --init-from a local HF folder with predictor
tokens added and embeddings resized."""
import pytest
import torch

from megajepa.model import PRESETS, build_model, llama_config, num_parameters, resize_for_tokenizer

# Published parameter counts of the Llama shapes (with a 128,256-token vocabulary).
PUBLISHED = {"llama-3.2-1b": 1.236e9, "llama-3.2-3b": 3.213e9, "llama-3.1-8b": 8.030e9}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_llama_shapes_match_published_sizes(preset):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(preset, 128256))
    assert abs(num_parameters(model) - PUBLISHED[preset]) / PUBLISHED[preset] < 0.01


def test_every_preset_builds_a_config():
    for name in PRESETS:
        cfg = llama_config(name, 1000)
        assert cfg.hidden_size % cfg.num_attention_heads == 0 and cfg.vocab_size == 1000
    with pytest.raises(ValueError, match="unknown model preset"):
        llama_config("gpt9", 1000)


def test_seeded_init_is_reproducible():
    a, b, c = (build_model(preset="tiny", vocab_size=50, seed=s) for s in (1, 1, 2))
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not torch.equal(pa["model.embed_tokens.weight"], pc["model.embed_tokens.weight"])


def test_init_from_hf_folder_adds_pred_tokens_and_resizes(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from data_tools.tokenizer import load_tokenizer, pred_ids

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "a", "b", "c", "d"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    src = build_model(preset="tiny", vocab_size=len(vocab), seed=0)
    src.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")

    loaded, added = load_tokenizer(str(tmp_path / "hf"), k=3)
    assert "<pred_3>" in added and len(pred_ids(loaded)) == 3
    model = build_model(init_from=str(tmp_path / "hf"))
    before = model.get_input_embeddings().weight.detach().clone()
    resize_for_tokenizer(model, loaded)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] >= len(loaded) > before.shape[0]
    assert torch.equal(emb[: before.shape[0]], before)          # old rows untouched
    assert torch.isfinite(emb).all()
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model(init_from=str(tmp_path / "nothing"))
