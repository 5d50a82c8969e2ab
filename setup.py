"""megajepa: single-pass LLM-JEPA pretraining on packed sequences with DeepSpeed."""
from setuptools import find_packages, setup

setup(
    name="megajepa",
    version="0.1.0",
    description="LLM-JEPA pretraining: one forward pass over packed sequences, DeepSpeed ZeRO-3",
    packages=find_packages(include=["megajepa", "megajepa.*", "data_tools", "data_tools.*"]),
    py_modules=["pretrain"],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.5",
        "transformers>=5.0",
        "deepspeed>=0.16",
        "numpy>=1.26",
        "pyyaml>=6",
        "sentencepiece>=0.2",
        "datasets>=3.0",  # 2.x runs a hub dataset's loading script by default (docs/trust.md)
        "tensorboard>=2.15",
        "tqdm>=4.66",
        "psutil>=5.9",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "cuda": ["triton>=3.0", "liger-kernel>=0.5"],
        "gguf": ["gguf>=0.10", "accelerate>=1.0"],  # --init-from a .gguf file (megajepa.pretrained)
        "lora": ["peft>=0.15"],  # --model.lora_rank (trainable_token_indices needs 0.15)
        "dev": ["pytest>=8", "hypothesis>=6.100", "triton>=3.0", "peft>=0.15", "gguf>=0.10",
                "accelerate>=1.0"],
    },
)
