"""SGR / SAF scores computed the way the released SGRAF code does: one caption at a time, sliced to its own
length, repeated over the images, every layer applied with torch.nn.functional on the head's weights.

This is the independent formulation the tests (and ``bench/sgraf_eval.py``) compare vlret's batched, masked
heads against. It shares no code with :mod:`vlret.models.heads.sgraf` beyond reading its parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.div(x, torch.pow(x, 2).sum(dim=dim, keepdim=True).sqrt() + 1e-8)


def l1norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.div(x, torch.abs(x).sum(dim=dim, keepdim=True) + 1e-8)


def _lin(layer, x):
    return F.linear(x, layer.weight, layer.bias)


def _bn(norm, x, training):
    # the running buffers are updated in place in training mode, as nn.BatchNorm1d does
    return F.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training, norm.momentum, norm.eps
    )


def visual_sa(sa, local, raw_global, training):
    l_emb = torch.tanh(_bn(sa.local_norm, _lin(sa.local, local), training))
    g_emb = torch.tanh(_bn(sa.glob_norm, _lin(sa.glob, raw_global), training))
    g_emb = g_emb.unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(_lin(sa.common, l_emb.mul(g_emb)).squeeze(2), dim=1)
    return l2norm((weights.unsqueeze(2) * local).sum(dim=1), dim=-1)


def text_sa(sa, local, raw_global):
    l_emb = torch.tanh(_lin(sa.local, local))
    g_emb = torch.tanh(_lin(sa.glob, raw_global)).unsqueeze(1).repeat(1, l_emb.size(1), 1)
    weights = torch.softmax(_lin(sa.common, l_emb.mul(g_emb)).squeeze(2), dim=1)
    return l2norm((weights.unsqueeze(2) * local).sum(dim=1), dim=-1)


def scan_attention(query, context, smooth):
    """SCAN's func_attention, clipped_l2norm: query [n, L, D] words, context [n, R, D] regions."""
    batch, query_len, source_len = query.size(0), query.size(1), context.size(1)
    attn = torch.bmm(context, torch.transpose(query, 1, 2))  # [n, R, L]
    attn = l2norm(F.leaky_relu(attn, 0.1), 2)
    attn = torch.transpose(attn, 1, 2).contiguous().view(batch * query_len, source_len)
    attn = torch.softmax(attn * smooth, dim=1).view(batch, query_len, source_len)
    weighted = torch.bmm(torch.transpose(context, 1, 2), torch.transpose(attn, 1, 2))  # [n, D, L]
    return l2norm(torch.transpose(weighted, 1, 2), dim=-1)


@torch.no_grad()
def reference_scores(head, captions: list[torch.Tensor], regions: torch.Tensor, training: bool = False):
    """``[images, captions]`` scores of ``head``'s weights (dropout is not applied: use 0 or eval mode).

    ``captions``: raw word features, one ``[L_c, D]`` tensor per caption; ``regions`` ``[Ni, R, D]`` raw."""
    img_emb = l2norm(regions, dim=-1)
    n_image = img_emb.size(0)
    img_glo = visual_sa(head.visual_attention, img_emb, torch.mean(img_emb, 1), training)
    columns = []
    for words in captions:
        cap_i = l2norm(words, dim=-1).unsqueeze(0)
        cap_i_expand = cap_i.repeat(n_image, 1, 1)
        cap_glo_i = text_sa(head.text_attention, cap_i, torch.mean(cap_i, 1))
        context = scan_attention(cap_i_expand, img_emb, head.attn_lambda)
        sim_loc = l2norm(_lin(head.local_proj, torch.pow(torch.sub(context, cap_i_expand), 2)), dim=-1)
        sim_glo = l2norm(_lin(head.global_proj, torch.pow(torch.sub(img_glo, cap_glo_i), 2)), dim=-1)
        sim_emb = torch.cat([sim_glo.unsqueeze(1), sim_loc], 1)
        if head.name == "sgr":
            for step in head.reasoning:
                query, key = _lin(step.query, sim_emb), _lin(step.key, sim_emb)
                edge = torch.softmax(torch.bmm(query, key.permute(0, 2, 1)), dim=-1)
                sim_emb = torch.relu(_lin(step.out, torch.bmm(edge, sim_emb)))
            sim_vec = sim_emb[:, 0, :]
        else:
            gate = _bn(head.gate_norm, _lin(head.gate, sim_emb).permute(0, 2, 1), training)
            attn = l1norm(torch.sigmoid(gate), dim=-1)
            sim_vec = l2norm(torch.matmul(attn, sim_emb).squeeze(1), dim=-1)
        columns.append(torch.sigmoid(_lin(head.score_proj, sim_vec)))
    return torch.cat(columns, 1)
