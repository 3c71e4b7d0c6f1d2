"""tests/reference/amg_ref.py — SamAutomaticMaskGenerator's selection without crops, for test_segment_auto.sh:
candidate masks (logits at the image's size, predicted IoU, grid points) → the records generate() returns with
output_mode "uncompressed_rle" (segment_anything/automatic_mask_generator.py: _process_batch, _process_crop,
generate; crop_n_layers 0, min_mask_region_area 0).

The helpers of segment_anything/utils/amg.py are transcribed below (build_point_grid, calculate_stability_score,
batched_mask_to_box, is_box_near_crop_edge, mask_to_rle_pytorch, rle_to_mask, area_from_rle, box_xyxy_to_xywh).
With MS_SAM_UPSTREAM=<a segment-anything checkout> upstream's own amg.py is loaded from that checkout instead (it
needs only numpy and torch). torchvision is not installed with Debian's python3-torch, so batched_nms is a
transcription of torchvision/csrc/ops/cpu/nms_kernel.cpp (one category: plain nms) in either case.
"""
import importlib.util
import os
import sys

import numpy as np
import torch


# ---- transcription of segment_anything/utils/amg.py -----------------------------------------------------------

def build_point_grid(n_per_side):
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def calculate_stability_score(masks, mask_threshold, threshold_offset):
    intersections = (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def batched_mask_to_box(masks):
    if torch.numel(masks) == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    h, w = shape[-2:]
    masks = masks.flatten(0, -3) if len(shape) > 2 else masks.unsqueeze(0)
    in_height, _ = torch.max(masks, dim=-1)
    in_height_coords = in_height * torch.arange(h, device=in_height.device)[None, :]
    bottom_edges, _ = torch.max(in_height_coords, dim=-1)
    in_height_coords = in_height_coords + h * (~in_height)
    top_edges, _ = torch.min(in_height_coords, dim=-1)
    in_width, _ = torch.max(masks, dim=-2)
    in_width_coords = in_width * torch.arange(w, device=in_width.device)[None, :]
    right_edges, _ = torch.max(in_width_coords, dim=-1)
    in_width_coords = in_width_coords + w * (~in_width)
    left_edges, _ = torch.min(in_width_coords, dim=-1)
    empty_filter = (right_edges < left_edges) | (bottom_edges < top_edges)
    out = torch.stack([left_edges, top_edges, right_edges, bottom_edges], dim=-1)
    out = out * (~empty_filter).unsqueeze(-1)
    return out.reshape(*shape[:-2], 4) if len(shape) > 2 else out[0]


def uncrop_boxes_xyxy(boxes, crop_box):
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if len(boxes.shape) == 3:
        offset = offset.unsqueeze(1)
    return boxes + offset


def is_box_near_crop_edge(boxes, crop_box, orig_box, atol=20.0):
    crop_box_torch = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_box_torch = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop_box_torch[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig_box_torch[None, :], atol=atol, rtol=0)
    near_crop_edge = torch.logical_and(near_crop_edge, ~near_image_edge)
    return torch.any(near_crop_edge, dim=1)


def mask_to_rle_pytorch(tensor):
    b, h, w = tensor.shape
    tensor = tensor.permute(0, 2, 1).flatten(1)
    diff = tensor[:, 1:] ^ tensor[:, :-1]
    change_indices = diff.nonzero()
    out = []
    for i in range(b):
        cur_idxs = change_indices[change_indices[:, 0] == i, 1]
        cur_idxs = torch.cat([torch.tensor([0], dtype=cur_idxs.dtype), cur_idxs + 1,
                              torch.tensor([h * w], dtype=cur_idxs.dtype)])
        btw_idxs = cur_idxs[1:] - cur_idxs[:-1]
        counts = [] if tensor[i, 0] == 0 else [0]
        counts.extend(btw_idxs.detach().cpu().tolist())
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle):
    h, w = rle["size"]
    mask = np.empty(h * w, dtype=bool)
    idx = 0
    parity = False
    for count in rle["counts"]:
        mask[idx: idx + count] = parity
        idx += count
        parity ^= True
    return mask.reshape(w, h).transpose()


def area_from_rle(rle):
    return sum(rle["counts"][1::2])


def box_xyxy_to_xywh(box_xyxy):
    box_xywh = box_xyxy.clone()
    box_xywh[2] = box_xywh[2] - box_xywh[0]
    box_xywh[3] = box_xywh[3] - box_xywh[1]
    return box_xywh


def amg_module():
    """Upstream's amg.py when MS_SAM_UPSTREAM names a checkout, else this transcription; and which one."""
    up = os.environ.get("MS_SAM_UPSTREAM")
    if not up:
        return sys.modules[__name__], "transcription of segment_anything/utils/amg.py"
    path = os.path.join(up, "segment_anything", "utils", "amg.py")
    spec = importlib.util.spec_from_file_location("sam_upstream_amg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


# ---- torchvision.ops.nms (csrc/ops/cpu/nms_kernel.cpp) ---------------------------------------------------------

def nms(boxes, scores, iou_threshold):
    """boxes float32 (N, 4) xyxy; greedy in decreasing score; suppress IoU > threshold (float32 IoU, double
    comparison). Returns the kept indices in decreasing score."""
    b = boxes.numpy().astype(np.float32)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True)[1].tolist()
    n = len(order)
    suppressed = [False] * n
    keep = []
    for oi in range(n):
        i = order[oi]
        if suppressed[i]:
            continue
        keep.append(i)
        for oj in range(oi + 1, n):
            j = order[oj]
            if suppressed[j]:
                continue
            xx1, yy1 = max(x1[i], x1[j]), max(y1[i], y1[j])
            xx2, yy2 = min(x2[i], x2[j]), min(y2[i], y2[j])
            w = max(np.float32(0), np.float32(xx2 - xx1))
            h = max(np.float32(0), np.float32(yy2 - yy1))
            inter = np.float32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                ovr = np.float32(inter / np.float32(np.float32(areas[i] + areas[j]) - inter))
            if float(ovr) > iou_threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.int64)


# ---- the generator's selection ---------------------------------------------------------------------------------

def select(A, masks, iou_preds, points, pred_iou_thresh=0.88, stability_score_thresh=0.95,
           stability_score_offset=1.0, box_nms_thresh=0.7):
    """masks: float32 (N, h, w) logits at the image's size; iou_preds float32 (N); points float64 (N, 2).
    Returns generate()'s records (output_mode "uncompressed_rle", no crops)."""
    h, w = masks.shape[-2:]
    crop_box = [0, 0, w, h]
    d = {"masks": masks, "iou_preds": iou_preds, "points": points}

    def filt(keep):
        for k in d:
            d[k] = d[k][keep]

    if pred_iou_thresh > 0.0:
        filt(d["iou_preds"] > pred_iou_thresh)
    d["stability_score"] = A.calculate_stability_score(d["masks"], 0.0, stability_score_offset)
    if stability_score_thresh > 0.0:
        filt(d["stability_score"] >= stability_score_thresh)
    d["masks"] = d["masks"] > 0.0
    d["boxes"] = A.batched_mask_to_box(d["masks"])
    keep = ~A.is_box_near_crop_edge(d["boxes"], crop_box, [0, 0, w, h])
    if not torch.all(keep):
        filt(keep)
    rles = A.mask_to_rle_pytorch(d["masks"])
    keep = nms(d["boxes"].float(), d["iou_preds"], box_nms_thresh)
    filt(keep)
    rles = [rles[i] for i in keep.tolist()]
    return [{"segmentation": rles[i], "area": A.area_from_rle(rles[i]),
             "bbox": A.box_xyxy_to_xywh(d["boxes"][i]).tolist(), "predicted_iou": d["iou_preds"][i].item(),
             "point_coords": [d["points"][i].tolist()], "stability_score": d["stability_score"][i].item(),
             "crop_box": list(crop_box)} for i in range(len(rles))]


def label_map(A, anns, h, w, max_label=255):
    """mrisam's label image (finetune/amg.h): masks in decreasing area, ties by rank, pixel = 1 + rank."""
    lab = np.zeros((h, w), np.int64)
    ranks = sorted(range(min(len(anns), max_label)), key=lambda i: (-anns[i]["area"], i))
    for i in ranks:
        lab[A.rle_to_mask(anns[i]["segmentation"])] = i + 1
    return lab


def compare(got, ref, tag):
    """mrisam's JSON records against the reference's: everything exact (floats as float32), points to 1e-12."""
    msgs = []
    if len(got) != len(ref):
        msgs.append("%s: %d masks, reference %d" % (tag, len(got), len(ref)))
    for i, (g, r) in enumerate(zip(got, ref)):
        for k in ("segmentation", "area", "bbox", "crop_box"):
            if g[k] != r[k]:
                msgs.append("%s: mask %d: %s %s, reference %s" % (tag, i, k, str(g[k])[:80], str(r[k])[:80]))
        for k in ("predicted_iou", "stability_score"):
            if np.float32(g[k]) != np.float32(r[k]) and not (np.isnan(g[k]) and np.isnan(r[k])):
                msgs.append("%s: mask %d: %s %r, reference %r" % (tag, i, k, g[k], r[k]))
        if np.abs(np.array(g["point_coords"]) - np.array(r["point_coords"])).max() > 1e-12 * max(1.0, np.abs(
                np.array(r["point_coords"])).max()):
            msgs.append("%s: mask %d: point %s, reference %s" % (tag, i, g["point_coords"], r["point_coords"]))
    return msgs
