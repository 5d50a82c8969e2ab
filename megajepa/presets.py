"""The model shapes ``model.preset`` names (random init): Llama-style configs from ``tiny``
(tests, the CPU default) to the published Llama-3.x shapes. Plain data, below the config that
validates a preset's name and the model code that builds it."""

# Llama shapes. "tiny" is for tests and the CPU default; the others follow the published
# Llama-3.x shapes (Llama-3.2 ties input and output embeddings, Llama-3.1-8B does not).
_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "mini": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, tie_word_embeddings=True,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, tie_word_embeddings=False,
                         rms_norm_eps=1e-5, rope_parameters=_LLAMA3_ROPE),
}
