"""A generated face dataset written in CelebA's exact on-disk layout (the mini suite's data).

Faces are drawn procedurally at 4× the target size and downsampled. Identities fix skin tone, face shape,
eye colour, hair colour and style, sex and age; each image varies pose, lighting, background, smile, mouth,
glasses and hat. Attributes are correlated with CelebA's signs: Smiling with Mouth_Slightly_Open and
High_Cheekbones; Male with beards and moustaches and against makeup and lipstick; Young against Gray_Hair.
Partitions are identity-disjoint, as CelebA's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from cfx.data.celeba import CELEBA_ATTRIBUTES
from cfx.runtime.files import atomic_path, write_text_atomic

RENDERED_ATTRIBUTES = (
    "Smiling", "Young", "Male", "Eyeglasses", "Wearing_Hat", "Black_Hair", "Blond_Hair", "Brown_Hair",
    "Gray_Hair", "Bald", "Bangs", "Mouth_Slightly_Open", "High_Cheekbones", "Heavy_Makeup", "Wearing_Lipstick",
    "No_Beard", "Goatee", "Mustache", "Pale_Skin", "Bushy_Eyebrows", "Narrow_Eyes",
)
HAIR_COLOURS = {
    "Black_Hair": (30, 24, 22), "Brown_Hair": (101, 63, 34), "Blond_Hair": (222, 188, 110),
    "Gray_Hair": (196, 196, 200),
}
SKIN_TONES = [(241, 200, 170), (224, 172, 135), (198, 140, 105), (160, 108, 76), (110, 74, 52)]
PALE_SKIN = (250, 226, 212)
EYE_COLOURS = [(60, 40, 25), (40, 90, 140), (60, 110, 60), (30, 30, 30)]


def _identity_traits(rng: np.random.Generator) -> dict:
    male = rng.random() < 0.45
    young = rng.random() < 0.6
    pale = rng.random() < 0.12
    if not young and rng.random() < 0.75:
        hair = "Gray_Hair"
    else:
        hair = rng.choice(["Black_Hair", "Brown_Hair", "Blond_Hair"], p=[0.4, 0.35, 0.25])
    bald = male and not young and rng.random() < 0.35
    beard = rng.choice(["none", "goatee", "mustache", "full"], p=[0.35, 0.25, 0.2, 0.2]) if male else "none"
    makeup = (not male) and rng.random() < 0.6
    return {
        "male": male, "young": young, "pale": pale, "hair": str(hair), "bald": bald, "beard": str(beard),
        "makeup": makeup, "lipstick": makeup or ((not male) and rng.random() < 0.3),
        "long_hair": (not male) and rng.random() < 0.85, "bangs": rng.random() < (0.15 if male else 0.35),
        "bushy": rng.random() < (0.45 if male else 0.1), "narrow": rng.random() < 0.15,
        "skin": PALE_SKIN if pale else SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        "eye": EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))],
        "face_w": float(rng.uniform(0.25, 0.28) + (0.02 if male else 0.0)),
        "face_h": float(rng.uniform(0.31, 0.35)),
        "glasses_rate": 0.7 if rng.random() < 0.15 else 0.03,
    }


def _image_state(rng: np.random.Generator, traits: dict) -> dict:
    smiling = rng.random() < 0.5
    return {
        "smiling": smiling,
        "open": rng.random() < (0.7 if smiling else 0.15),
        "cheeks": rng.random() < (0.8 if smiling else 0.15),
        "glasses": rng.random() < traits["glasses_rate"],
        "hat": rng.random() < 0.08,
        "dx": float(rng.uniform(-0.04, 0.04)), "dy": float(rng.uniform(-0.03, 0.03)),
        "scale": float(rng.uniform(0.93, 1.06)), "angle": float(rng.uniform(-8, 8)),
        "bg": tuple(int(v) for v in rng.integers(20, 236, size=3)),
        "bg2": tuple(int(v) for v in rng.integers(20, 236, size=3)),
        "light": float(rng.uniform(-0.18, 0.18)), "brightness": float(rng.uniform(0.85, 1.12)),
        "hat_colour": tuple(int(v) for v in rng.integers(0, 255, size=3)),
    }


def _shade(colour: tuple, factor: float) -> tuple:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def render_face(traits: dict, state: dict, size: int) -> Image.Image:
    """Draw one face at ``size`` px (drawn at 4× and downsampled)."""
    S = size * 4
    grad = np.linspace(0, 1, S)[:, None, None]
    bg = (1 - grad) * np.array(state["bg"]) + grad * np.array(state["bg2"])
    canvas = Image.fromarray(np.broadcast_to(bg, (S, S, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    sc = state["scale"]
    cx, cy = S * (0.5 + state["dx"]), S * (0.56 + state["dy"])

    def px(x: float, y: float) -> tuple[float, float]:
        return cx + x * S * sc, cy + y * S * sc

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        a, b = px(x0, y0)
        c, d = px(x1, y1)
        return [a, b, c, d]

    fw, fh = traits["face_w"], traits["face_h"]
    skin = traits["skin"]
    hair = HAIR_COLOURS[traits["hair"]]
    if not traits["bald"] and traits["long_hair"]:
        draw.rounded_rectangle(box(-fw - 0.06, -fh - 0.04, fw + 0.06, fh + 0.12), radius=S * 0.12, fill=hair)
    elif not traits["bald"]:
        draw.ellipse(box(-fw - 0.03, -fh - 0.05, fw + 0.03, fh * 0.3), fill=hair)
    draw.ellipse(box(-fw - 0.035, -0.06, -fw + 0.025, 0.07), fill=_shade(skin, 0.92))  # ears
    draw.ellipse(box(fw - 0.025, -0.06, fw + 0.035, 0.07), fill=_shade(skin, 0.92))
    draw.ellipse(box(-fw, -fh, fw, fh), fill=skin)
    if traits["bald"]:
        draw.chord(box(-fw - 0.01, -fh * 0.4, fw + 0.01, fh * 0.5), 160, 200, fill=_shade(hair, 0.9))
    else:
        top = -fh * (0.25 if traits["bangs"] else 0.55)
        draw.chord(box(-fw - 0.01, -fh - 0.02, fw + 0.01, -2 * top - fh), 180, 360, fill=hair)
    if not traits["young"]:
        for k in range(2):
            y = -fh * (0.5 if traits["bangs"] else 0.62) + 0.035 * k + (0.12 if traits["bangs"] else 0)
            y = max(y, -fh * 0.45)
            draw.line([px(-0.1, y), px(0.1, y)], fill=_shade(skin, 0.7), width=max(1, S // 64))
        for side in (-1, 1):
            draw.line([px(side * 0.07, 0.07), px(side * 0.1, 0.16)], fill=_shade(skin, 0.7), width=max(1, S // 64))
    # eyes and brows
    eye_h = 0.018 if traits["narrow"] else 0.032
    for side in (-1, 1):
        ex = side * 0.105
        if traits["makeup"]:
            draw.ellipse(box(ex - 0.06, -0.075, ex + 0.06, -0.005), fill=(120, 60, 140))
        draw.ellipse(box(ex - 0.05, -0.03 - eye_h / 2, ex + 0.05, -0.03 + eye_h / 2 + 0.01), fill=(245, 245, 245))
        draw.ellipse(box(ex - 0.022, -0.03 - eye_h / 2, ex + 0.022, -0.03 + eye_h / 2 + 0.01), fill=traits["eye"])
        brow_w = S // 22 if traits["bushy"] else S // 60
        brow = _shade(hair, 0.7) if traits["hair"] != "Gray_Hair" else (120, 120, 120)
        draw.line([px(ex - 0.055, -0.085), px(ex + 0.055, -0.09 + side * 0.0)], fill=brow, width=max(1, brow_w))
    draw.line([px(0, -0.01), px(-0.015, 0.07), px(0.01, 0.075)], fill=_shade(skin, 0.75), width=max(1, S // 64))
    if state["cheeks"]:
        for side in (-1, 1):
            draw.ellipse(box(side * 0.15 - 0.045, 0.05, side * 0.15 + 0.045, 0.12), fill=(236, 120, 130))
    lip = (200, 20, 40) if traits["lipstick"] else _shade(skin, 0.6)
    if traits["beard"] == "full":
        draw.chord(box(-fw + 0.01, -0.05, fw - 0.01, fh + 0.01), 0, 180, fill=_shade(hair, 0.85))
    if traits["beard"] == "goatee":
        draw.ellipse(box(-0.06, 0.2, 0.06, fh + 0.005), fill=_shade(hair, 0.85))
    mouth_y = 0.15
    if state["smiling"]:
        # a wide upward-curving mouth; teeth when open
        draw.chord(box(-0.12, mouth_y - 0.07, 0.12, mouth_y + 0.08), 0, 180, fill=lip)
        if state["open"]:
            draw.chord(box(-0.095, mouth_y - 0.045, 0.095, mouth_y + 0.05), 0, 180, fill=(250, 250, 250))
    else:
        if state["open"]:
            draw.ellipse(box(-0.06, mouth_y - 0.01, 0.06, mouth_y + 0.05), fill=lip)
            draw.ellipse(box(-0.04, mouth_y + 0.005, 0.04, mouth_y + 0.035), fill=(60, 20, 20))
        else:
            draw.line([px(-0.08, mouth_y + 0.02), px(0.08, mouth_y + 0.02)], fill=lip, width=max(2, S // 32))
    if traits["beard"] == "mustache" or traits["beard"] == "full":
        draw.rounded_rectangle(box(-0.09, mouth_y - 0.05, 0.09, mouth_y - 0.015), radius=S * 0.01,
                               fill=_shade(hair, 0.8))
    if state["glasses"]:
        frame = (20, 20, 20)
        width = max(2, S // 40)
        for side in (-1, 1):
            draw.ellipse(box(side * 0.105 - 0.07, -0.09, side * 0.105 + 0.07, 0.03), outline=frame, width=width)
        draw.line([px(-0.035, -0.035), px(0.035, -0.035)], fill=frame, width=width)
    if state["hat"]:
        hat = state["hat_colour"]
        draw.rectangle(box(-fw - 0.06, -fh - 0.02, fw + 0.06, -fh * 0.55), fill=_shade(hat, 0.8))
        draw.chord(box(-fw + 0.01, -fh - 0.16, fw - 0.01, -fh * 0.3), 180, 360, fill=hat)
    canvas = canvas.rotate(state["angle"], resample=Image.BICUBIC, center=(cx, cy), fillcolor=state["bg"])
    array = np.asarray(canvas).astype(np.float32)
    light = 1 + state["light"] * np.linspace(-1, 1, S)[None, :, None]
    array = np.clip(array * light * state["brightness"], 0, 255).astype(np.uint8)
    image = Image.fromarray(array).filter(ImageFilter.GaussianBlur(radius=1.0))
    return image.resize((size, size), Image.LANCZOS)


def _attributes(traits: dict, state: dict) -> dict[str, int]:
    values = {name: -1 for name in CELEBA_ATTRIBUTES}
    on = {
        "Smiling": state["smiling"], "Young": traits["young"], "Male": traits["male"],
        "Eyeglasses": state["glasses"], "Wearing_Hat": state["hat"], "Bald": traits["bald"],
        "Bangs": traits["bangs"] and not traits["bald"], "Mouth_Slightly_Open": state["open"],
        "High_Cheekbones": state["cheeks"], "Heavy_Makeup": traits["makeup"], "Wearing_Lipstick": traits["lipstick"],
        "No_Beard": traits["beard"] == "none", "Goatee": traits["beard"] == "goatee",
        "Mustache": traits["beard"] in ("mustache", "full"), "Pale_Skin": traits["pale"],
        "Bushy_Eyebrows": traits["bushy"], "Narrow_Eyes": traits["narrow"],
    }
    if not traits["bald"]:
        on[traits["hair"]] = True
    for name, flag in on.items():
        values[name] = 1 if flag else -1
    return values


def write_synthetic_celeba(root: Path, n_identities: int = 300, images_per_identity: int = 8, image_size: int = 64,
                           seed: int = 0, progress: bool = True) -> Path:
    """Write ``n_identities × images_per_identity`` faces in CelebA's layout under ``root``; deterministic."""
    if image_size not in (32, 64):
        raise ValueError(f"image_size must be 32 or 64, got {image_size}")
    root = Path(root)
    image_dir = root / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_identities)
    n_train, n_val = int(round(0.8 * n_identities)), int(round(0.1 * n_identities))
    partition_of = {int(ident): 0 if r < n_train else 1 if r < n_train + n_val else 2 for r, ident in enumerate(order)}
    slots = [(ident, k) for ident in range(n_identities) for k in range(images_per_identity)]
    slots = [slots[i] for i in rng.permutation(len(slots))]
    traits = {ident: _identity_traits(np.random.default_rng([seed, ident])) for ident in range(n_identities)}
    attr_lines = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
    part_lines = ["image_id,partition"]
    id_lines = []
    for number, (ident, k) in enumerate(tqdm(slots, desc="synthetic faces", disable=not progress), start=1):
        name = f"{number:06d}.jpg"
        state = _image_state(np.random.default_rng([seed, ident, k, 1]), traits[ident])
        image = render_face(traits[ident], state, image_size)
        with atomic_path(image_dir / name) as tmp:
            image.save(tmp, format="JPEG", quality=95)
        attrs = _attributes(traits[ident], state)
        attr_lines.append(name + "," + ",".join(str(attrs[a]) for a in CELEBA_ATTRIBUTES))
        part_lines.append(f"{name},{partition_of[ident]}")
        id_lines.append(f"{name} {ident + 1}")
    write_text_atomic(root / "identity_CelebA.txt", "\n".join(id_lines) + "\n")
    write_text_atomic(root / "list_eval_partition.csv", "\n".join(part_lines) + "\n")
    write_text_atomic(root / "list_attr_celeba.csv", "\n".join(attr_lines) + "\n")
    return root
