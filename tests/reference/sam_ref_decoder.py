"""tests/reference/sam_ref_decoder.py — PyTorch reference of SAM's prompt encoder and mask decoder.

Written from docs/MODEL.md §Prompt encoder, §Mask decoder (not copied from segment-anything), with SAM's module and
state-dict key names, so a state dict of this model loads strictly into SAM's own classes and vice versa. Differences
from the official code are deliberate and only about batching: the working batch is B = max(image batch, prompt batch),
and whichever side has batch 1 is expanded (official predictor: one image, many prompts; finetune-SAM: many images,
one prompt-free token set, docs/MODEL.md §Mask decoder). Autograd sums the gradients of the expanded side back.

Run with Debian's /usr/bin/python3 (torch 1.13, CPU).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    def __init__(self, dim, hidden, act=nn.ReLU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """Hypernetwork / IoU head: Linear layers with ReLU between them, nothing after the last."""

    def __init__(self, inp, hidden, out, n_layers):
        super().__init__()
        dims = [inp] + [hidden] * (n_layers - 1)
        outs = [hidden] * (n_layers - 1) + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Decoder attention, internal width dim/downsample; scale applied after q·kᵀ (docs/MODEL.md §Mask decoder)."""

    def __init__(self, dim, heads, downsample=1):
        super().__init__()
        self.internal = dim // downsample
        self.heads = heads
        self.q_proj = nn.Linear(dim, self.internal)
        self.k_proj = nn.Linear(dim, self.internal)
        self.v_proj = nn.Linear(dim, self.internal)
        self.out_proj = nn.Linear(self.internal, dim)

    def _split(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        attn = q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        out = torch.softmax(attn, dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim, heads, mlp_dim, skip_first_layer_pe):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, 2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth=2, dim=256, heads=8, mlp_dim=2048):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding, image_pe, point_embedding):
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class PositionEmbeddingRandom(nn.Module):
    def __init__(self, num_pos_feats=128):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _pe_encoding(self, coords):
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, h, w):
        g = self.positional_encoding_gaussian_matrix
        y = (torch.arange(h, dtype=g.dtype, device=g.device) + 0.5) / h
        x = (torch.arange(w, dtype=g.dtype, device=g.device) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        return self._pe_encoding(torch.stack([xx, yy], dim=-1)).permute(2, 0, 1)  # (C, h, w)

    def forward_with_coords(self, coords, img_size):
        c = coords.clone()
        c[..., 0] = c[..., 0] / img_size
        c[..., 1] = c[..., 1] / img_size
        return self._pe_encoding(c)


class PromptEncoder(nn.Module):
    def __init__(self, dim=256, emb_hw=(64, 64), img_size=1024, mask_in_chans=16):
        super().__init__()
        self.dim, self.emb_hw, self.img_size = dim, emb_hw, img_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, 2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, 2), LayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, dim, 1))
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self):
        return self.pe_layer.dense(*self.emb_hw).unsqueeze(0)

    def _embed_points(self, points, labels, pad):
        points = points + 0.5
        if pad:
            points = torch.cat([points, torch.zeros(points.shape[0], 1, 2, dtype=points.dtype, device=points.device)], dim=1)
            labels = torch.cat([labels, -torch.ones(labels.shape[0], 1, dtype=labels.dtype, device=labels.device)], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.img_size)
        lab = labels[..., None]
        pe = torch.where(lab == -1, torch.zeros_like(pe), pe)
        pe = pe + (lab == -1) * self.not_a_point_embed.weight
        pe = pe + (lab == 0) * self.point_embeddings[0].weight
        pe = pe + (lab == 1) * self.point_embeddings[1].weight
        return pe

    def _embed_boxes(self, boxes):
        corners = self.pe_layer.forward_with_coords((boxes + 0.5).reshape(-1, 2, 2), self.img_size)
        return torch.stack([corners[:, 0] + self.point_embeddings[2].weight[0],
                            corners[:, 1] + self.point_embeddings[3].weight[0]], dim=1)

    def forward(self, points=None, boxes=None, masks=None):
        """points: (coords (bp,N,2), labels (bp,N)) or None."""
        bs = 1
        for t in (points[0] if points is not None else None, boxes, masks):
            if t is not None:
                bs = t.shape[0]
                break
        dt = self.no_mask_embed.weight.dtype
        sparse = torch.empty(bs, 0, self.dim, dtype=dt, device=self.no_mask_embed.weight.device)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.emb_hw)
        return sparse, dense


class MaskDecoder(nn.Module):
    def __init__(self, dim=256, num_multimask_outputs=3, depth=2):
        super().__init__()
        self.transformer = TwoWayTransformer(depth, dim, 8, 2048)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, 2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def predict_masks(self, image_embeddings, image_pe, sparse, dense):
        """All M masks (B,M,4h,4w) and IoU (B,M); B = max(image batch, prompt batch)."""
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        bp = sparse.shape[0]
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(bp, -1, -1), sparse], dim=1)
        B = max(image_embeddings.shape[0], bp)
        tokens = tokens.expand(B, -1, -1)
        src = image_embeddings.expand(B, -1, -1, -1) + dense.expand(B, -1, -1, -1)
        pos = image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape
        hs, keys = self.transformer(src, pos, tokens)
        self.last_hs, self.last_keys = hs, keys
        iou_out = hs[:, 0]
        mask_out = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([self.output_hypernetworks_mlps[i](mask_out[:, i]) for i in range(self.num_mask_tokens)], 1)
        b, c, h, w = up.shape
        masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_out)

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output):
        masks, iou = self.predict_masks(image_embeddings, image_pe, sparse, dense)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou[:, sl]


class SamHead(nn.Module):
    """Prompt encoder + mask decoder under SAM's top-level key names (prompt_encoder.*, mask_decoder.*)."""

    def __init__(self, emb_hw=(64, 64), img_size=1024, num_multimask_outputs=3):
        super().__init__()
        self.prompt_encoder = PromptEncoder(256, emb_hw, img_size)
        self.mask_decoder = MaskDecoder(256, num_multimask_outputs)

    def forward(self, image_embeddings, points=None, boxes=None, masks=None, multimask_output=True):
        sparse, dense = self.prompt_encoder(points, boxes, masks)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense,
                                 multimask_output)
