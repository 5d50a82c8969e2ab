"""LLM-JEPA pretraining entry point.

    python pretrain.py                                  # embedded default: tiny model, CPU-friendly
    deepspeed --num_gpus 8 pretrain.py --config X.yaml  # ZeRO per train.ds_config
    python pretrain.py --help                           # every setting, with units and defaults
"""
import sys

from megajepa.launch import main

if __name__ == "__main__":
    sys.exit(main())
