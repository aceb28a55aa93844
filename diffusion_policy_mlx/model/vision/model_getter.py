"""Upstream's ``get_resnet``: a torchvision-named ResNet trunk whose ``fc`` is removed."""

from pathlib import Path

from safetensors.numpy import load_file

from diffusion_policy_mlx.common.upstream import load_upstream_state_dict
from diffusion_policy_mlx.model.vision.resnet import RESNETS, ResNet


def get_resnet(name: str, weights: str | Path | None = None, **kwargs) -> ResNet:
    """Build ``resnet18`` / ``resnet34`` / ``resnet50`` without its classifier.

    The result maps ``(B, H, W, 3)`` images to ``(B, 512)`` features (``(B, 2048)`` for
    resnet50), like upstream's ``resnet.fc = Identity()``.

    Args:
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        weights: ``None`` for torchvision's random init, or the path of a ``.safetensors`` file
            holding a torchvision ``state_dict`` for this architecture (its ``fc.*`` entries are
            dropped). Named hub weights (``"IMAGENET1K_V1"``, ``"r3m"``) are not downloaded.
        kwargs: passed to :class:`ResNet` (e.g. ``zero_init_residual``).
    """
    if name not in RESNETS:
        raise ValueError(f"get_resnet: unknown name {name!r}; use one of {sorted(RESNETS)}")
    if "num_classes" in kwargs:
        raise ValueError("get_resnet returns the trunk without fc; do not pass num_classes")
    model = RESNETS[name](num_classes=None, **kwargs)
    if weights is None:
        return model

    path = Path(weights)
    if path.suffix != ".safetensors":
        raise ValueError(
            f"get_resnet: weights={str(weights)!r} is not a .safetensors file. Hub weights are "
            "not downloaded here: save a torchvision state_dict with "
            "safetensors.torch.save_file(model.state_dict(), 'resnet.safetensors') and pass its path."
        )
    if not path.is_file():
        raise FileNotFoundError(f"get_resnet: weights file {path} does not exist")
    state_dict = {k: v for k, v in load_file(str(path)).items() if not k.startswith("fc.")}
    try:
        load_upstream_state_dict(model, state_dict)
    except ValueError as err:
        raise ValueError(
            f"get_resnet: {path} is not a torchvision {name} state_dict.\n{err}"
        ) from err
    return model
