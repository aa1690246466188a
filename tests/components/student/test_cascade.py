import pytest
import torch

from components.student.cascade import cascade_search
from tests.components.student.test_lora_encoder import make_encoder

FAQ = ["how do i reset my password", "card lost", "where is the parcel", "cancel order", "refund fee"]


def test_shortlist_by_cosine_then_rank_by_joint(tiny_lm):
    enc = make_encoder(tiny_lm)
    queries = ["password reset", "lost card"]
    hits = cascade_search(enc, queries, FAQ, top_k=3)
    cosine = enc.encode(queries) @ enc.encode(FAQ).T
    for qi, row in enumerate(hits):
        assert len(row) == 3
        assert {h.index for h in row} == set(cosine[qi].topk(3).indices.tolist())  # the shortlist is cosine's
        assert [h.joint for h in row] == sorted((h.joint for h in row), reverse=True)  # the decision is joint's
        expected = enc.joint_scores([queries[qi]] * 3, [FAQ[h.index] for h in row])
        torch.testing.assert_close(torch.tensor([h.joint for h in row]), expected, atol=1e-5, rtol=0)


def test_top_k_larger_than_the_faq_and_bad_k(tiny_lm):
    enc = make_encoder(tiny_lm)
    assert len(cascade_search(enc, ["fee"], FAQ[:2], top_k=10)[0]) == 2
    with pytest.raises(ValueError, match="top_k"):
        cascade_search(enc, ["fee"], FAQ, top_k=0)
