"""Each loss against an independent reference written out element by element, as in the papers."""
import math

import pytest
import torch

from distill.engine import losses
from distill.engine.losses import LOSSES

torch.manual_seed(0)
B, S, D, H = 2, 5, 6, 3
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _real_tokens():
    return [(b, i) for b in range(B) for i in range(S) if MASK[b, i]]


def test_token_mse_is_mean_over_real_tokens_and_features():
    s, t = torch.randn(B, S, D), torch.randn(B, S, D)
    s_pad = s.clone()
    s_pad[1, 3:] += 100.0  # padding must not matter
    total = sum(float((s[b, i, d] - t[b, i, d]) ** 2) for b, i in _real_tokens() for d in range(D))
    ref = total / (len(_real_tokens()) * D)
    assert float(losses.token_mse(s_pad, t, MASK)) == pytest.approx(ref, rel=1e-6)


def test_token_cosine_is_one_minus_cosine():
    s, t = torch.randn(B, S, D), torch.randn(B, S, D)
    vals = []
    for b, i in _real_tokens():
        dot = float(s[b, i] @ t[b, i])
        vals.append(1 - dot / (float(s[b, i].norm()) * float(t[b, i].norm())))
    assert float(losses.token_cosine(s, t, MASK)) == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert float(losses.token_cosine(t, t, MASK)) == pytest.approx(0.0, abs=1e-6)


def test_attention_scores_mse_excludes_padded_queries_and_keys():
    s, t = torch.randn(B, H, S, S), torch.randn(B, H, S, S)
    terms = [float((s[b, h, i, j] - t[b, h, i, j]) ** 2)
             for b in range(B) for h in range(H) for i in range(S) for j in range(S) if MASK[b, i] and MASK[b, j]]
    assert float(losses.attention_scores_mse(s, t, MASK)) == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    with pytest.raises(ValueError, match="attention_kl"):
        losses.attention_scores_mse(s[:, :2], t, MASK)


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    return [x / sum(e) for x in e]


def _relation_kl_reference(xs, ys, xt, yt, heads):
    """KL(teacher||student) of softmax(x_r y_r^T / sqrt(d_r)) over real keys, mean over heads and real queries."""
    vals = []
    for b in range(B):
        keys = [j for j in range(S) if MASK[b, j]]
        for r in range(heads):
            def rel(x, y):
                d = x.shape[-1] // heads
                xr, yr = x[b, :, r * d:(r + 1) * d], y[b, :, r * d:(r + 1) * d]
                return [_softmax([float(xr[i] @ yr[j]) / math.sqrt(d) for j in keys]) for i in range(S)]
            ps, pt = rel(xs, ys), rel(xt, yt)
            for i in keys:
                vals.append(sum(pt[i][k] * math.log(pt[i][k] / ps[i][k]) for k in range(len(keys))))
    return sum(vals) / len(vals)


def test_attention_kl_works_across_head_counts_and_equals_reference():
    # student 4 heads x 2 dims (width 8), teacher 6 heads x 2 dims (width 12): compared on 2 relation heads
    qs, ks = torch.randn(B, S, 8), torch.randn(B, S, 8)
    qt, kt = torch.randn(B, S, 12), torch.randn(B, S, 12)
    got = float(losses.attention_kl((qs, ks), (qt, kt), MASK, relation_heads=2))
    assert got == pytest.approx(_relation_kl_reference(qs, ks, qt, kt, 2), rel=1e-5)
    assert float(losses.attention_kl((qt, kt), (qt, kt), MASK, relation_heads=6)) == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_with_own_heads_is_kl_of_real_attention_probabilities():
    q, k = torch.randn(B, S, D), torch.randn(B, S, D)
    qt, kt = torch.randn(B, S, D), torch.randn(B, S, D)

    def probs(q, k):  # what BERT's eager attention computes, with the padding mask
        qh = q.view(B, S, H, D // H).transpose(1, 2)
        kh = k.view(B, S, H, D // H).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(D // H) + (1 - MASK)[:, None, None, :] * -1e9
        return scores.softmax(-1)

    ps, pt = probs(q, k), probs(qt, kt)
    kl = (pt * (pt.clamp_min(1e-30).log() - ps.clamp_min(1e-30).log())).sum(-1)  # (B, H, S)
    m = MASK[:, None, :].expand_as(kl).float()
    ref = float((kl * m).sum() / m.sum())
    assert float(losses.attention_kl((q, k), (qt, kt), MASK, relation_heads=H)) == pytest.approx(ref, rel=1e-5)


def test_value_relation_kl_equals_reference():
    vs, vt = torch.randn(B, S, 8), torch.randn(B, S, 12)
    got = float(losses.value_relation_kl(vs, vt, MASK, relation_heads=4))
    assert got == pytest.approx(_relation_kl_reference(vs, vs, vt, vt, 4), rel=1e-5)


def test_soft_ce_at_temperature():
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    T = 2.5
    ref = 0.0
    for n in range(4):
        pt = _softmax([float(x) / T for x in t[n]])
        ps = _softmax([float(x) / T for x in s[n]])
        ref += -sum(pt[c] * math.log(ps[c]) for c in range(3))
    assert float(losses.soft_ce(s, t, None, temperature=T)) == pytest.approx(ref / 4, rel=1e-5)
    # per-token form (MLM logits): padded tokens excluded
    s3, t3 = torch.randn(B, S, 7), torch.randn(B, S, 7)
    per = [-sum(p * math.log(q) for p, q in zip(_softmax(t3[b, i].tolist()), _softmax(s3[b, i].tolist())))
           for b, i in _real_tokens()]
    assert float(losses.soft_ce(s3, t3, MASK)) == pytest.approx(sum(per) / len(per), rel=1e-5)


def test_hard_losses_and_mlm():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    ref = sum(-math.log(_softmax(logits[n].tolist())[int(labels[n])]) for n in range(4)) / 4
    assert float(losses.hard_ce(logits, labels)) == pytest.approx(ref, rel=1e-5)
    assert float(losses.hard_mse(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 5.0]))) == pytest.approx(2.5)
    assert float(losses.logits_mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))) == pytest.approx(2.5)
    mlm_logits = torch.randn(1, 3, 5)
    mlm_labels = torch.tensor([[-100, 4, -100]])
    ref = -math.log(_softmax(mlm_logits[0, 1].tolist())[4])
    assert float(losses.mlm(mlm_logits, mlm_labels)) == pytest.approx(ref, rel=1e-5)


def test_registry_entries_are_complete():
    for name, spec in LOSSES.items():
        assert spec.scope in ("embedding", "layers", "last", "output"), name
        assert spec.doc, name


def test_soft_ce_t2_follows_hinton_and_sanh():
    """soft_ce_t2 = T^2 * soft_ce, and its gradient equals that of DistilBERT's T^2 * KL(teacher || student)
    (the two differ by the teacher's entropy, a constant for the student)."""
    t = torch.randn(4, 3)
    T = 2.0
    s = torch.randn(4, 3, requires_grad=True)
    got = losses.soft_ce_t2(s, t, None, temperature=T)
    assert float(got) == pytest.approx(T ** 2 * float(losses.soft_ce(s, t, None, temperature=T)), rel=1e-6)
    (grad,) = torch.autograd.grad(got, s)
    s2 = s.detach().clone().requires_grad_(True)
    sanh = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s2 / T, -1), torch.softmax(t / T, -1)) * T ** 2
    (ref,) = torch.autograd.grad(sanh, s2)
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-7)
    assert float(losses.soft_ce_t2(s, t, None, temperature=1.0)) == pytest.approx(float(losses.soft_ce(s, t)))
    assert LOSSES["soft_ce_t2"].tempered and LOSSES["mlm_soft_ce_t2"].tempered


def test_attention_scores_are_float32_from_bf16_queries_and_keys():
    """Mixed precision: the student's q/k arrive in bf16; its scores must be as exact as the teacher's."""
    from distill.engine.features import LayerAttention

    q, k = torch.randn(B, S, 8).bfloat16(), torch.randn(B, S, 8).bfloat16()
    got = LayerAttention(q, k, k, heads=2).scores()
    qf = q.float().view(B, S, 2, 4).transpose(1, 2)
    kf = k.float().view(B, S, 2, 4).transpose(1, 2)
    reference = qf @ kf.transpose(-1, -2) / 2.0  # exact float32 product of the same (bf16-valued) inputs
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in the training loop
        under_autocast = LayerAttention(q, k, k, heads=2).scores()
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["attention_kl", "value_relation_kl", "hidden_mse", "soft_ce"])
def test_losses_stay_float32_under_autocast(name):
    """The relation losses multiply q/k (or v) matrices: under bf16 autocast that matmul would run in
    bf16 even on float32 inputs. Every loss must give the float32 value whatever autocast is active."""
    torch.manual_seed(3)
    x = [torch.randn(B, S, 16) * 3 for _ in range(4)]
    args = {"attention_kl": ((x[0], x[1]), (x[2], x[3]), MASK), "value_relation_kl": (x[0], x[2], MASK),
            "hidden_mse": (x[0], x[2], MASK), "soft_ce": (x[0][:, 0], x[2][:, 0], None)}[name]
    kwargs = {"relation_heads": 4} if "relation" in name or "attention" in name else {}
    fn = LOSSES[name].fn
    reference = fn(*args, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(*args, **kwargs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-7)
