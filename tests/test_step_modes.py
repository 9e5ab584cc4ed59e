"""How a training step runs (medcore.step_modes): the autocast setting. The LoRA-input copy and the compiled
layers are tested through training in test_train (they only mean something inside the Trainer's loop)."""
import pytest

from medcore import step_modes, train
from medcore.config import RunConfig


def config():
    return RunConfig()


def test_autocast_setting_picks_the_device_default():
    cfg = config()
    assert step_modes.uses_autocast(cfg, on_cuda=True) and not step_modes.uses_autocast(cfg, on_cuda=False)
    cfg.train.autocast = "off"
    assert not step_modes.uses_autocast(cfg, on_cuda=True)
    cfg.train.autocast = "bf16"
    assert step_modes.uses_autocast(cfg, on_cuda=False)
    assert train.training_arguments(cfg, "unused", 10, on_cuda=False, has_eval=False).bf16


def test_decoder_layers_refuses_a_model_without_them():
    import torch

    with pytest.raises(ValueError, match="train.compile=false"):
        step_modes.decoder_layers(torch.nn.Linear(2, 2))


def test_old_names_stay_importable_from_train_for_one_release():
    assert train.lora_inputs_in_bf16 is step_modes.lora_input_float32
    assert train.skips_lora_input_copy is step_modes.skips_lora_input_float32
    assert not step_modes.skips_lora_input_float32("dora", True, False)
    assert step_modes.skips_lora_input_float32("rslora", True, False)
