"""ImageNet (or any classification set) as an ImageFolder tree: root/train/<class>/*, root/val/<class>/*."""
from pathlib import Path

from torchvision import datasets

from learnsparse.core.errors import UserError

from . import transforms as T
from .bundle import DataBundle


def imagenet(root: str, image_size: int = 224, resize: int = 256) -> DataBundle:
    root_path = Path(root).expanduser()
    for split in ("train", "val"):
        if not (root_path / split).is_dir():
            raise UserError(
                f"imagenet: no folder {root_path / split}; expected ImageFolder layout "
                f"{root_path}/{{train,val}}/<class>/<image>; set data.root=<folder that holds train/ and val/>"
            )
    try:
        train = datasets.ImageFolder(str(root_path / "train"), T.imagenet(True, image_size, resize))
        val = datasets.ImageFolder(str(root_path / "val"), T.imagenet(False, image_size, resize))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(f"imagenet: {e}".replace("\n", " ")) from e
    if train.classes != val.classes:
        raise UserError(f"imagenet: train has {len(train.classes)} classes, val {len(val.classes)}; they must match")
    return DataBundle(train, val, len(train.classes), 3, image_size, "imagenet")
