"""The seed papers' models and a small training loop with a weight cache."""
from .cnn import NO_DIGIT, bn_cnn, judge_cnn, no_digit_images, train_judge
from .fcnn import FCNN, MLP, SEED_DEPTHS, SLP, seed_fcnn
from .invertible import (
    InvertibleNet,
    invertible_base,
    invertible_no_activations,
    invertible_small,
)
from .training import CACHE_ENV, TrainConfig, accuracy, cache_dir, train
from .vit import load_pretrained_vit, vit_mnist, vit_mnist_small

__all__ = [
    "FCNN", "MLP", "SLP", "SEED_DEPTHS", "seed_fcnn", "InvertibleNet", "invertible_base",
    "invertible_small", "invertible_no_activations", "TrainConfig", "train", "accuracy",
    "cache_dir", "CACHE_ENV", "vit_mnist", "vit_mnist_small", "load_pretrained_vit", "bn_cnn", "judge_cnn",
    "no_digit_images", "train_judge", "NO_DIGIT",
]
