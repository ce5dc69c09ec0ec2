"""Fixed artifact names and format versions, in one place."""

CONFIG_NAME = "gearshift.json"
WEIGHTS_NAME = "model.safetensors"
PLUGIN_WEIGHTS_NAME = "plugin.safetensors"
FORMAT_VERSION = 1

# Checkpoints written by the training loop (train/checkpoint.py).
TRAINER_STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"  # loaded with torch.load(weights_only=True)
RNG_STATE_NAME = "rng_state.safetensors"
